"""Property-based fuzzing of the loader and the compiler (issue #13): whatever a file holds, `check` exits 0
or 1 with one FILE:LINE:COL: message line per problem and no traceback, and `compile` of an accepted file
never raises and prints one line per flow and per group. The mutations are testkit/config_fuzz.py's (also
used, longer and with time and memory bounds, by bench/fuzz_config.py); Hypothesis chooses and shrinks them."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudweave.config.errors import Problem
from cloudweave.config.yamlpos import load_located
from testkit.config_fuzz import broken_promises, dump, mutate_doc, mutate_text, seed_docs

SEEDS = seed_docs()
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(seed=st.sampled_from(range(len(SEEDS))), rnd=st.randoms(use_true_random=False),
       structural=st.booleans(), rounds=st.integers(1, 3))
def test_mutated_files_keep_the_promise(tmp_path, seed, rnd: random.Random, structural, rounds):
    _, text, doc = SEEDS[seed]
    mutated = dump(mutate_doc(doc, rnd, rounds)) if structural else mutate_text(text, rnd)
    path = tmp_path / "case.yaml"
    path.write_text(mutated)
    assert broken_promises(str(path)) == []


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list(":-[]{}&*!|>'\"%@`#,? \n\tab01.<~\u2028é")), max_size=200))
def test_any_text_parses_to_a_tree_or_located_one_line_problems(text):
    tree, problems = load_located("f.yaml", text)
    assert tree is not None or problems  # a tree, or problems that say why not
    for p in problems:
        assert isinstance(p, Problem) and p.loc.line >= 1 and p.loc.col >= 1
        assert "\n" not in str(p) and "\u2028" not in str(p)
