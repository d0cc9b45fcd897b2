#!/usr/bin/env python3
"""Writes the case list of sql/tests/gluesql_suite.rs from gluesql-test-suite's lib.rs.

    python3 sql/scripts/gen-suite.py ~/.cargo/registry/src/*/gluesql-test-suite-0.20.0/src/lib.rs

Prints one `case!` / `skip!` line per case of every `generate_*_tests!` macro, in the
suite's order; cases named in SKIP (sql/tests/gluesql_suite.rs keeps the reasons) come
out as `skip!`. Paste the output between the markers in gluesql_suite.rs.
"""
import re, sys

src = open(sys.argv[1]).read()
skips = {}
suite = open(__file__.replace("scripts/gen-suite.py", "tests/gluesql_suite.rs")).read()
for m in re.finditer(r'skip!\((\w+), [^,]+, "((?:[^"\\]|\\.)*)"\);', suite):
    skips[m.group(1)] = m.group(2)
for group in re.finditer(r"macro_rules! (generate_\w+) \{(.*?)\n\}\n", src, re.S):
    name, body = group.group(1), group.group(2)
    print(f"// {name}")
    for m in re.finditer(r"(sql_case|rust_case)!\(([\w:]+)\);", body):
        kind, path = m.group(1), m.group(2).split("::")
        if kind == "sql_case":
            fn = "sql_" + "_".join(path)
            target = '"' + "/".join(path) + '.sql"'
        else:
            fn = "_".join(path)
            target = "::".join(path + [path[-1]])
        if fn in skips:
            print(f'skip!({fn}, {target}, "{skips[fn]}");')
        else:
            print(f"case!({fn}, {target});")
