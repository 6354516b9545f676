"""What many tests share: tiny synthetic configurations (dot-list overrides) that run in seconds on 2 CPU cores, and
the check that a command failed with one error line. (A module of its own: test folders have conftests of their own,
so ``from conftest import`` would find whichever was imported first.)"""
import logging

TINY = [
    "data.num_frames=16", "data.resolution=[24,32]", "data.test_every=4", "data.val_every=4", "data.test_path_frames=4",
    "loader.resolution=[24,32]", "loader.batch_size=4", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
    "trainer.check_val_every_n_epoch=1",
]
TINY_VIT = ["student=vit", "student.depth=1", "student.latent_dim=32", "student.num_heads=2", "student.patch_size=8"]


def one_line_error(caplog, main, argv: list[str]) -> str:
    """The single ERROR line that ``main(argv)`` logs when it exits 2 (a user error)."""
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main(argv) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0]
    return errors[0]
