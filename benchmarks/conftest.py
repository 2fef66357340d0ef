from tests.conftest import AUDIO, DATA, ROOT, VIDEOS  # noqa: F401  (same media as the tests)
