#!/bin/sh
# Print the path of a Python >= 3.12 interpreter: first on PATH, then from pyenv.
# Exit 1 with a hint on stderr when there is none.
ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }

for name in python3.13 python3.12 python3; do
    path=$(command -v "$name" 2>/dev/null) || continue
    if ok "$path"; then
        "$path" -c 'import sys; print(sys.executable)'
        exit 0
    fi
done

if command -v pyenv >/dev/null 2>&1; then
    root=$(pyenv root)
    for version in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.(1[2-9]|[2-9][0-9])(\.[0-9]+)?$' | sort -t. -k2,2nr -k3,3nr); do
        path="$root/versions/$version/bin/python3"
        if ok "$path"; then
            echo "$path"
            exit 0
        fi
    done
fi

echo "No Python 3.12 or newer found (Django 6 needs it)." >&2
echo "Install one, e.g. 'apt-get install python3.12 python3.12-venv', 'brew install python@3.12'," >&2
echo "or 'pyenv install 3.12', then run make again (or set PYTHON=/path/to/python3.12)." >&2
exit 1
