import pytest

# Rich assertion messages for the conformance suite shipped inside the package.
pytest.register_assert_rewrite("storage.testing")
