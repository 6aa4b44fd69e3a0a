"""The self-assessment quiz of notebook 00: each question points to the notebook that teaches it."""

from __future__ import annotations

from dataclasses import dataclass

from autograd_cost.core import check_choice
from autograd_cost.exercises import report


@dataclass(frozen=True)
class Question:
    """A multiple-choice question, its right letter and where it is taught (notebook 00)."""

    text: str
    options: dict[str, str]
    answer: str
    notebook: str


QUESTIONS: dict[int, Question] = {
    1: Question(
        "In an MLP whose layers all have the same width (input, hidden layers and output "
        "alike), freezing the first half of its layers or the last half: which saves more "
        "backward FLOPs?",
        {"a": "the first half", "b": "the last half", "c": "both save the same"},
        "a",
        "01_which_nodes_exist",
    ),
    2: Question(
        "You run backward with every parameter trainable, then set requires_grad=False on "
        "one layer and run backward again without zeroing gradients. What is that layer's "
        ".grad now?",
        {"a": "a tensor of zeros", "b": "None",
         "c": "the gradient from the first backward, unchanged"},
        "c",
        "01_which_nodes_exist",
    ),
    3: Question(
        "If backward is about twice the forward's cost, what is the most that freezing can "
        "speed up a whole training step?",
        {"a": "no limit, if enough is frozen", "b": "about 3x", "c": "about 2x"},
        "b",
        "02_cost_vs_freeze_depth",
    ),
    4: Question(
        "Leaving parameters out of the optimizer but keeping requires_grad=True: does "
        "backward get cheaper?",
        {"a": "yes, the optimizer tells autograd to skip them", "b": "no"},
        "b",
        "03_ways_to_freeze",
    ),
    5: Question(
        "Rebuilding a weight with torch.cat of a frozen piece and a trainable piece: how "
        "many backward FLOPs does that save?",
        {"a": "the frozen piece's share", "b": "none"},
        "b",
        "04_partial_weight_freeze",
    ),
    6: Question(
        "Why does caching a frozen backbone's features beat merely freezing it?",
        {"a": "it has fewer parameters", "b": "the frozen forward runs once, not every epoch",
         "c": "it uses less optimizer state"},
        "b",
        "05_transfer_and_progressive",
    ),
    7: Question(
        "A model is already wrapped in DistributedDataParallel. You freeze a layer with "
        "requires_grad_(False). What happens?",
        {"a": "DDP all-reduces fewer bytes from the next step on",
         "b": "DDP still expects those gradients: an error on the next step, unless you "
              "re-wrap (or use find_unused_parameters, which still sends every byte)"},
        "b",
        "06_freezing_with_ddp",
    ),
    8: Question(
        "Training in float32 with Adam: how many bytes of parameter, gradient and optimizer "
        "state does one trainable parameter cost, and one frozen parameter?",
        {"a": "16 trainable, 4 frozen", "b": "8 trainable, 8 frozen",
         "c": "4 trainable, 0 frozen"},
        "a",
        "07_memory",
    ),
}


def show_quiz() -> None:
    """Print every question with its options (notebook 00)."""
    for number, question in QUESTIONS.items():
        print(f"Q{number}. {question.text}")
        for letter, option in question.options.items():
            print(f"     ({letter}) {option}")


def check_quiz(answers: dict[int, str]) -> bool:
    """Check quiz answers; for each miss, name the notebook that teaches it (notebook 00)."""
    for number, letter in answers.items():
        check_choice("question number", number, list(QUESTIONS))
        check_choice(f"answer to Q{number}", str(letter).lower(), list(QUESTIONS[number].options))
    missed = [n for n in QUESTIONS if str(answers.get(n, "")).lower() != QUESTIONS[n].answer]
    if not missed:
        return report(True, f"all {len(QUESTIONS)} answers right.", "")
    where = "; ".join(f"Q{n}: see {QUESTIONS[n].notebook}" for n in missed)
    return report(False, "", f"{len(missed)} of {len(QUESTIONS)} to revisit. {where}")
