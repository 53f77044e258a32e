"""A module whose import fails, as a Lambda zip missing a dependency."""

import router_test_module_that_does_not_exist

handler = router_test_module_that_does_not_exist.handler
