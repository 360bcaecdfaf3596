"""Stops ``feast apply``/``feast plan`` on this folder before they can change the registry.

Those commands import every module here and register the Feast objects found at module level.
This repository declares none (the views are generated per feature version by
:func:`feature_repo.store.apply`), so the CLI would see an empty repository and delete every view.
Nothing else imports this module.
"""

raise RuntimeError(
    "`feast apply`/`feast plan` are not supported on feature_repo/: they would delete the views "
    "registered by the SDK. Use `python -m feature_repo --home <home> apply` (or "
    "feature_repo.store.apply); read-only commands such as `feast feature-views list` are fine."
)
