"""pipelines/train_loop.py: the Ray Train worker loop reads top to bottom in about a screen (STYLE.md rule 9)."""

import ast
import inspect

from pipelines import train_loop


def _depth(node: ast.AST, level: int = 0) -> int:
    blocks = (ast.For, ast.While, ast.If, ast.With, ast.Try)
    inner = [_depth(c, level + isinstance(c, blocks)) for c in ast.iter_child_nodes(node)]
    return max([level, *inner])


def test_the_worker_loop_is_a_screen_and_three_blocks_deep_at_most():
    src = inspect.getsource(train_loop.train_loop_per_worker)
    fn = ast.parse(src).body[0]
    assert len(src.splitlines()) <= 30, len(src.splitlines())  # was 147 lines
    assert _depth(fn) <= 3  # was five levels of while / for / if / with
    # what one step is stays in named methods of the worker, each short too
    for name in ("epoch_batches", "train_on", "finish_step", "next_epoch", "finish"):
        assert len(inspect.getsource(getattr(train_loop.Worker, name)).splitlines()) <= 30, name


def test_a_worker_takes_its_share_of_the_nodes_cpus_unless_told():
    from pipelines.train_loop import worker_threads

    assert worker_threads(0, 1, cpus=2) == 2 and worker_threads(0, 2, cpus=2) == 1  # the demo machine
    assert worker_threads(0, 8, cpus=16) == 2 and worker_threads(0, 4, cpus=2) == 1
    assert worker_threads(3, 2, cpus=2) == 3  # what the user asked for
