"""shield-ops: EC2 spot clusters provisioned, deployed and started; a live terminal UI."""
import warnings as _warnings


def _import_asyncssh() -> None:
    """Import asyncssh once, here, before any module of ours does.

    asyncssh (2.24) names cryptography's DSA classes in its type hints at import time, and cryptography (51)
    deprecates DSA: every ``shield-ops`` call, ``--help`` included, printed ten ``CryptographyDeprecationWarning``
    lines. The filter covers only that category, only warnings attributed to asyncssh's own modules, and only during
    this import; any other warning, and any DSA use at run time, still shows.
    """
    with _warnings.catch_warnings():
        try:
            from cryptography.utils import CryptographyDeprecationWarning
        except ImportError:  # an older cryptography: nothing to filter
            pass
        else:
            _warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning, module=r"asyncssh(\.|$)")
        import asyncssh  # noqa: F401


_import_asyncssh()
