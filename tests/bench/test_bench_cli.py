"""``lit3d bench``'s user errors: one line on stderr or in the log, exit status 2, no traceback."""
import pytest
import torch

from lit3d.bench.__main__ import main
from testkit import one_line_error


def test_unknown_benchmark_is_one_line(capsys):
    assert main(["modle"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lit3d bench: unknown benchmark 'modle'; benchmarks: ") and err.count("\n") == 1


@pytest.mark.parametrize("argv, message", [
    (["model", "--iters", "x"], "python -m lit3d.bench model: argument --iters: invalid int value: 'x'"),
    (["model", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["teacher", "--dtypes", "fp8"], "argument --dtypes: invalid choice: 'fp8'"),
    (["model", "--device", "gpu", "--no-teacher", "--no-data"], "invalid value for '--device': 'gpu'"),
])
def test_bad_options_are_one_line(caplog, argv, message):
    assert message in one_line_error(caplog, main, argv)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_a_gpu_is_one_line(caplog):
    for name in ("model", "teacher"):
        msg = one_line_error(caplog, main, [name, "--device", "cuda", "--no-teacher", "--no-data"] if name == "model"
                              else [name, "--device", "cuda"])
        assert msg == "--device=cuda: no CUDA GPU is available here (use --device=cpu or auto)"
