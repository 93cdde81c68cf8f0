#!/bin/sh
# Builds the exporter's Python environment, exactly as the image has it.
# Used by the Dockerfile and by tests/test_image_env.py, so the test installs what the image installs.
#   install-venv.sh VENV          pinned dependencies only (the image's cached layer)
#   install-venv.sh VENV SRC      then the project from the source tree SRC (no extras: no Triton)
# Idempotent: running it again on an existing VENV only reinstalls the project.
set -eu
VENV=$1
SRC=${2:-}
HERE=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python3}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$HERE/requirements.txt"
# BCC's bindings come from the distribution's python3-bpfcc (PyPI's "bcc" is another project);
# the link dangles in the build stage and resolves in the runtime stage, which installs them.
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
ln -sfn /usr/lib/python3/dist-packages/bcc "$SITE/bcc"
if [ -n "$SRC" ]; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall "$SRC"
    "$VENV/bin/python" -m pip check
fi
