#!/usr/bin/env python3
"""Searches the logs a test run wrote (TEST_LOG_DIR) for what must never be logged: phone
numbers, e-mail addresses, access tokens, sign-in codes, and every secret the tests use
(docs/privacy.md, "Logs"). Exits 1, naming each finding, when there is one.

The secrets are read from the tests' own sources (string constants whose name says SECRET,
KEY, TOKEN or PASSWORD, and the values of JSON fields that carry credentials), so a test
that adds one is covered without a list to keep.

Usage: check-logs.py LOG_DIR [SOURCE_DIR ...]
"""

import pathlib
import re
import sys

PATTERNS = {
    # E.164 numbers (`+` and 8 to 15 digits); times and offsets have fewer digits.
    "phone number": re.compile(r"(?<![\w.])\+[1-9][0-9]{7,14}(?![0-9])"),
    "e-mail address": re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
    # A JWT: two base64url JSON parts.
    "access token": re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}"),
    "sign-in code": re.compile(r"code is [0-9]{6}"),
    # Credentials inside a URL (`scheme://user:password@host`).
    "password in a URL": re.compile(r"[a-z]+://[^/\s:@\"]+:[^/\s@\"]+@"),
}

CONSTANT = re.compile(
    r"const [A-Z0-9_]*(?:SECRET|KEY|TOKEN|PASSWORD)[A-Z0-9_]*: &str = \"([^\"]{6,})\""
)
FIELD = re.compile(
    r"\"(?:[a-z_]*secret|[a-z_]*token|api_key|password|[a-z_]*password)\"\s*:\s*\"([^\"{}]{8,})\""
)


def secrets(sources):
    found = set()
    for root in sources:
        for path in pathlib.Path(root).rglob("*.rs"):
            text = path.read_text(encoding="utf-8", errors="replace")
            found.update(CONSTANT.findall(text))
            found.update(FIELD.findall(text))
    return sorted(found)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    logs = pathlib.Path(sys.argv[1])
    files = sorted(p for p in logs.glob("*.log") if p.is_file())
    known = secrets(sys.argv[2:])
    findings = []
    lines = 0
    for path in files:
        with path.open(encoding="utf-8", errors="replace") as log:
            for number, line in enumerate(log, 1):
                lines += 1
                for kind, pattern in PATTERNS.items():
                    match = pattern.search(line)
                    if match:
                        findings.append((path.name, number, kind, match.group(0)))
                for secret in known:
                    if secret in line:
                        findings.append((path.name, number, "test secret", secret))
    print(
        f"check-logs: {len(files)} log files, {lines} lines, {len(known)} test secrets searched",
        file=sys.stderr,
    )
    if findings:
        for name, number, kind, what in findings[:50]:
            print(f"  {name}:{number}: {kind}: {what}", file=sys.stderr)
        if len(findings) > 50:
            print(f"  … and {len(findings) - 50} more", file=sys.stderr)
        print("check-logs: the logs hold personal data or secrets", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
