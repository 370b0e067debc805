"""The embedded CPU testbed: task, character tokenizer, small Qwen3 model, warm start.

Everything a laptop without GPU or network needs to run the full stalerl loop:

* :mod:`stalerl.testbed.task` -- procedurally generated, verifiable multi-step arithmetic
  (:func:`generate_problems`, :class:`Problem`, :data:`TESTBED_TEMPLATE`), with train and
  held-out splits that are disjoint by construction (split by a hash of the problem text).
* :mod:`stalerl.testbed.solution` -- worked solutions: the canonical one
  (:func:`worked_solution`) and sampled ones with a choice of order (:func:`sampled_solution`).
* :mod:`stalerl.testbed.tokenizer` -- :func:`build_char_tokenizer`, a character-level
  ``PreTrainedTokenizerFast`` (exact round-trip, left padding).
* :mod:`stalerl.testbed.model` -- :func:`testbed_model_config`, small ``Qwen3Config`` sizes
  ``tiny`` and ``small``.
* :mod:`stalerl.testbed.warmstart` -- :func:`warm_start` (supervised training on CPU,
  cached on disk) and :func:`load_testbed`; its data (problems with sampled solutions) in
  :mod:`stalerl.testbed.warmstart_data`, :func:`sample_accuracy` in :mod:`stalerl.testbed.accuracy`.

Typical use::

    from stalerl.testbed import warm_start, load_testbed, generate_problems, sample_accuracy

    path = warm_start()                       # trains once (about 3 CPU minutes), then cached
    model, tokenizer = load_testbed(path)     # AutoModelForCausalLM / AutoTokenizer
    heldout = generate_problems(256, split="test")
    print(sample_accuracy(model, tokenizer, heldout))   # starting accuracy of RL
"""

from stalerl.testbed.model import MODEL_SIZES, testbed_model_config
from stalerl.testbed.solution import sampled_solution, worked_solution
from stalerl.testbed.task import (
    LEVELS,
    SPLITS,
    TESTBED_TEMPLATE,
    Problem,
    evaluate_expression,
    generate_problems,
    make_problem,
    problem_split,
)
from stalerl.testbed.tokenizer import build_char_tokenizer
from stalerl.testbed.warmstart import (
    WARMSTART_RECIPES,
    default_cache_dir,
    extract_boxed,
    load_testbed,
    sample_accuracy,
    warm_start,
)

__all__ = [
    "LEVELS",
    "MODEL_SIZES",
    "Problem",
    "SPLITS",
    "TESTBED_TEMPLATE",
    "WARMSTART_RECIPES",
    "build_char_tokenizer",
    "default_cache_dir",
    "evaluate_expression",
    "extract_boxed",
    "generate_problems",
    "load_testbed",
    "make_problem",
    "problem_split",
    "sample_accuracy",
    "sampled_solution",
    "testbed_model_config",
    "warm_start",
    "worked_solution",
]
