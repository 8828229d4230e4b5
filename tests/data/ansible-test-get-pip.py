"""What ansible-test runs as get-pip.py, made from the pip wheel that CPython bundles.

ansible-test creates each sanity test's virtual environment without pip, then bootstraps pip
with a get-pip.py it downloads once (ansible_test/_util/target/setup/requirements.py,
``download_file``) from a host these machines cannot reach; it first looks in
``~/.ansible/test/cache/get_pip_<version>.py``. tests/test_collection.py puts this file there:
ensurepip's bundled wheel runs pip, which installs the pip version asked for from the package
index, as the real script would.
"""

import ensurepip
import glob
import os
import sys

bundled = os.path.join(os.path.dirname(ensurepip.__file__), "_bundled")
sys.path.insert(0, sorted(glob.glob(os.path.join(bundled, "pip-*.whl")))[-1])

from pip._internal.cli.main import main  # noqa: E402  (importable only from the wheel above)

# get-pip.py's own flags, which pip install does not know
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(main(["install", "--no-warn-script-location", *args]))
