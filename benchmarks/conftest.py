from tests.conftest import AUDIO, DATA, ROOT, VIDEOS  # noqa: F401  (same media as the tests)
from tests.conftest import built  # noqa: F401  (session fixture: packages built once from ../shared/data)
