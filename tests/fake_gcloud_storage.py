"""`gcloud storage ls|cp` as an operator runs them, over the fake host's Cloud Storage
(`$FAKE_GCS/<bucket>/<object>`, written by tests/fakehost.py's upload endpoint). Output and errors
as the CLI prints them (https://cloud.google.com/sdk/gcloud/reference/storage/ls, …/cp): `ls` prints
one gs:// URL per object (a sub-prefix ends with /), a URL that matches nothing is an error."""

from __future__ import annotations

import os
import shutil
import sys


def split(url: str) -> tuple[str, str]:
    bucket, _, name = url.removeprefix("gs://").partition("/")
    return bucket, name


def main(argv: list[str]) -> int:
    store = os.environ["FAKE_GCS"]
    if argv[:2] == ["storage", "ls"] and len(argv) == 3:
        bucket, prefix = split(argv[2])
        root = os.path.join(store, bucket)
        if not os.path.isdir(root):
            print(f"ERROR: (gcloud.storage.ls) gs://{bucket} not found: 404.", file=sys.stderr)
            return 1
        found = set()
        for dirpath, _, files in os.walk(root):
            for file in files:
                name = os.path.relpath(os.path.join(dirpath, file), root)
                if name.startswith(prefix):
                    rest = name[len(prefix) :]
                    found.add(prefix + (rest.split("/")[0] + "/" if "/" in rest else rest))
        if not found:
            print("ERROR: (gcloud.storage.ls) One or more URLs matched no objects.", file=sys.stderr)
            return 1
        for name in sorted(found):
            print(f"gs://{bucket}/{name}")
        return 0
    if argv[:2] == ["storage", "cp"] and len(argv) == 4:
        bucket, name = split(argv[2])
        source = os.path.join(store, bucket, name)
        if not os.path.isfile(source):
            print(
                f"ERROR: (gcloud.storage.cp) The following URLs matched no objects or files:\n-{argv[2]}",
                file=sys.stderr,
            )
            return 1
        print(f"Copying {argv[2]} to file://{argv[3]}", file=sys.stderr)
        shutil.copyfile(source, argv[3])
        return 0
    print(f"fake gcloud: unsupported {argv}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
