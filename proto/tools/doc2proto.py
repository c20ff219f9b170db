#!/usr/bin/env python3
"""Regenerates proto/v1/*.proto from the Webmesh v1 API document.

The document (protoc-gen-doc output) lists every message, field, enum and RPC but
not the wire facts; those are applied here: fields are numbered in listed order
except for three messages with gaps, `*Entry` fields become maps, `Outer.Inner`
enums nest inside `Outer`, and files import each other as the reference does.

Usage: python3 proto/tools/doc2proto.py ../shared/seed/webmesh-api-v1.md proto/v1
The output is committed; run this only to check it against the document again.
"""
import re
import sys
import textwrap
from pathlib import Path

# Field numbers that are not simply 1, 2, 3, ... in listed order.
FIELD_NUMBERS = {
    "QueryRequest": {"command": 2, "query": 3},
    "QueryResponse": {"key": 2, "value": 3, "error": 4},
    "PluginInfo": {"name": 1, "version": 2, "description": 3, "capabilities": 5},
}
RESERVED_FIELDS = {"QueryRequest": [1], "QueryResponse": [1], "PluginInfo": [4]}
# Enum numbers that the reference commented out: never reuse them.
RESERVED_ENUM = {"RuleVerb": ([2], ["VERB_GET"])}

IMPORTS = {
    "node": ["raft"],
    "plugin": ["raft", "mesh"],
    "mesh": ["node"],
    "admin": ["mesh", "rbac", "network_acls"],
    "app": ["node", "mesh"],
}

WKT = {
    "google.protobuf.Empty": "google/protobuf/empty.proto",
    "google.protobuf.Timestamp": "google/protobuf/timestamp.proto",
    "google.protobuf.Duration": "google/protobuf/duration.proto",
    "google.protobuf.Struct": "google/protobuf/struct.proto",
}


def cells(line):
    parts = [c.strip() for c in line.strip().strip("|").split("|")]
    return [re.sub(r"\\(.)", r"\1", c) for c in parts]


def typename(cell):
    m = re.match(r"\[([^\]]+)\]\([^)]*\)(\s+stream)?", cell)
    if not m:
        raise ValueError(f"bad type cell {cell!r}")
    return m.group(1).lstrip("."), bool(m.group(2))


def comment(text, indent):
    text = " ".join(text.split())
    if not text:
        return []
    width = 88 - len(indent) - 3
    return [f"{indent}// {line}" for line in textwrap.wrap(text, width)]


def parse(doc):
    files = {}
    cur_file = None
    sections = re.split(r"^(##+ .*)$", doc, flags=re.M)
    for i in range(1, len(sections), 2):
        head, body = sections[i], sections[i + 1]
        if head.startswith("## "):
            m = re.match(r"## v1/(\w+)\.proto", head)
            cur_file = m.group(1) if m else None
            if cur_file:
                files[cur_file] = []
            continue
        if cur_file is None:
            continue
        name = head[4:].strip()
        lines = body.splitlines()
        desc, table = [], []
        for ln in lines:
            if ln.startswith("|"):
                table.append(ln)
            elif not table and ln.strip() and not ln.startswith("<") and not ln.startswith("["):
                desc.append(ln.strip())
        header = cells(table[0]) if table else []
        rows = [cells(r) for r in table[2:]]
        if header[:1] == ["Field"] or not header:
            kind = "message"
        elif header[:1] == ["Name"]:
            kind = "enum"
        elif header[:1] == ["Method Name"]:
            kind = "service"
        else:
            raise ValueError(f"unknown table in {name}: {header}")
        files[cur_file].append({"name": name, "kind": kind, "desc": " ".join(desc), "rows": rows})
    return files


def render(fname, items):
    entries = {it["name"]: it for it in items if it["name"].endswith("Entry") and "." in it["name"]}
    enums_nested = {}
    for it in items:
        if it["kind"] == "enum" and "." in it["name"]:
            outer, inner = it["name"].split(".", 1)
            enums_nested.setdefault(outer, []).append(dict(it, name=inner))
    used_wkt = set()
    body = []

    def field_type(ty):
        if ty in entries:
            kt = typename(entries[ty]["rows"][0][1])[0]
            vt = typename(entries[ty]["rows"][1][1])[0]
            return f"map<{kt}, {vt}>", True
        if ty in WKT:
            used_wkt.add(ty)
        return ty, False

    def enum_lines(it, indent):
        out = comment(it["desc"], indent)
        out.append(f"{indent}enum {it['name']} {{")
        if it["name"] in RESERVED_ENUM:
            nums, names = RESERVED_ENUM[it["name"]]
            out.append(f"{indent}  reserved {', '.join(map(str, nums))};")
            out.append(f"{indent}  reserved {', '.join(repr(n).replace(chr(39), chr(34)) for n in names)};")
        for name, num, desc in it["rows"]:
            out += comment(desc, indent + "  ")
            out.append(f"{indent}  {name} = {num};")
        out.append(f"{indent}}}")
        return out

    for it in items:
        if it["name"] in entries or (it["kind"] == "enum" and "." in it["name"]):
            continue
        if it["kind"] == "enum":
            body += enum_lines(it, "")
        elif it["kind"] == "message":
            body += comment(it["desc"], "")
            body.append(f"message {it['name']} {{")
            for nested in enums_nested.get(it["name"], []):
                body += enum_lines(nested, "  ")
                body.append("")
            if it["name"] in RESERVED_FIELDS:
                body.append(f"  reserved {', '.join(map(str, RESERVED_FIELDS[it['name']]))};")
            numbers = FIELD_NUMBERS.get(it["name"], {})
            for n, (fname_, ty_cell, label, desc) in enumerate(it["rows"], start=1):
                ty, _ = typename(ty_cell)
                ty, is_map = field_type(ty)
                if ty.startswith(it["name"] + "."):
                    ty = ty[len(it["name"]) + 1:]
                num = numbers.get(fname_, n)
                prefix = "" if is_map or not label else f"{label} "
                body += comment(desc, "  ")
                body.append(f"  {prefix}{ty} {fname_} = {num};")
            if body[-1] == "":
                body.pop()
            body.append("}")
        else:
            body += comment(it["desc"], "")
            body.append(f"service {it['name']} {{")
            for mname, req, resp, desc in it["rows"]:
                rq, rqs = typename(req)
                rs, rss = typename(resp)
                for t in (rq, rs):
                    if t in WKT:
                        used_wkt.add(t)
                body += comment(desc, "  ")
                s1 = "stream " if rqs else ""
                s2 = "stream " if rss else ""
                body.append(f"  rpc {mname}({s1}{rq}) returns ({s2}{rs}) {{}}")
            body.append("}")
        body.append("")

    head = [
        "// Webmesh v1 API. Written from the Webmesh v1 API document; field numbers,",
        "// maps and nesting follow the reference wire format (see proto/README.md).",
        'syntax = "proto3";',
        "",
        "package v1;",
        "",
    ]
    imps = [f'import "{WKT[t]}";' for t in sorted(used_wkt, key=lambda t: WKT[t])]
    imps += [f'import "v1/{d}.proto";' for d in IMPORTS.get(fname, [])]
    if imps:
        head += imps + [""]
    return "\n".join(head + body).rstrip() + "\n"


def main():
    doc = Path(sys.argv[1]).read_text()
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    for fname, items in parse(doc).items():
        (out / f"{fname}.proto").write_text(render(fname, items))


if __name__ == "__main__":
    main()
