"""Example on the analysis image: a SQLite database in, a diagram of its
tables and foreign-key joins out (graphviz).

    sandq enqueue examples/schema_diagram.py --input examples/shop.db --wait

For every table: its columns with their types, primary-key (PK) and
foreign-key (FK) markers and NOT NULL, and its row count. Every foreign key
is an arrow from the referencing column to the column it references (many
to one). Writes schema.pdf (drawn by graphviz's dot) and schema.dot (the
graph's source), and checks the data against the keys
(PRAGMA foreign_key_check).

Argument (optional): the database, as a name under $INPUT_DIR; by default
the first *.db, *.sqlite or *.sqlite3 there.
"""
import html
import os
import sqlite3
import sys

import graphviz

inputs = os.environ["INPUT_DIR"]
outputs = os.environ["OUTPUT_DIR"]

if len(sys.argv) > 1:
    name = sys.argv[1]
else:
    found = sorted(n for n in os.listdir(inputs) if n.lower().endswith((".db", ".sqlite", ".sqlite3")))
    if not found:
        sys.exit("no .db, .sqlite or .sqlite3 file among the inputs")
    name = found[0]
path = os.path.join(inputs, name)

# The inputs are mounted read-only: immutable=1 tells SQLite that nothing
# else writes the file, so it takes no locks and writes no journal.
con = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)


def q(ident):
    return '"' + ident.replace('"', '""') + '"'


tables = [r[0] for r in con.execute(
    "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
if not tables:
    sys.exit(f"{name}: no tables")

columns, fkeys, counts = {}, {}, {}
for t in tables:
    # cid, name, type, notnull, default, pk (position in the primary key)
    columns[t] = con.execute(f"PRAGMA table_info({q(t)})").fetchall()
    counts[t] = con.execute(f"SELECT count(*) FROM {q(t)}").fetchone()[0]
for t in tables:
    by_id = {}
    # id, seq, referenced table, from column, to column, on update, on delete, match
    for fid, _seq, ref, col_from, col_to, _upd, on_delete, _match in con.execute(f"PRAGMA foreign_key_list({q(t)})"):
        fk = by_id.setdefault(fid, {"table": ref, "from": [], "to": [], "on_delete": on_delete})
        fk["from"].append(col_from)
        fk["to"].append(col_to)
    for fk in by_id.values():
        if fk["to"][0] is None:  # REFERENCES parent, without columns: its primary key
            fk["to"] = [c[1] for c in sorted(columns.get(fk["table"], []), key=lambda c: c[5]) if c[5]] or ["?"]
    fkeys[t] = list(by_id.values())
violations = con.execute("PRAGMA foreign_key_check").fetchall()

FONT = "DejaVu Sans"
dot = graphviz.Digraph("schema", graph_attr={
    "rankdir": "LR", "fontname": FONT, "label": f"{name}: {len(tables)} tables, "
    f"{sum(len(f) for f in fkeys.values())} foreign keys", "labelloc": "t", "fontsize": "16",
    "nodesep": "0.4", "ranksep": "1.1", "pad": "0.3",
}, node_attr={"shape": "plain", "fontname": FONT, "fontsize": "11"},
    edge_attr={"fontname": FONT, "fontsize": "9", "color": "#4a6fa5", "dir": "both",
               "arrowhead": "tee", "arrowtail": "crow"})

for t in tables:
    fk_cols = {c for fk in fkeys[t] for c in fk["from"]}
    rows = [f'<tr><td colspan="3" bgcolor="#4a6fa5"><font color="white"><b>{html.escape(t)}</b></font></td></tr>',
            f'<tr><td colspan="3" bgcolor="#e8eef7"><font point-size="9">{counts[t]:,} rows</font></td></tr>']
    for _cid, col, ctype, notnull, _default, pk in columns[t]:
        marks = " ".join(m for m, on in (("PK", pk), ("FK", col in fk_cols)) if on)
        ctype = (ctype or "any").lower() + (" not null" if notnull and not pk else "")
        name_cell = f"<b>{html.escape(col)}</b>" if pk else html.escape(col)
        marks = f'<font point-size="9" color="#a05a00">{marks}</font>' if marks else " "
        # Arrows leave a row on its right (the type) and reach one on its
        # left (the markers).
        rows.append(f'<tr><td align="left" port="in_{html.escape(col)}">{marks}</td>'
                    f'<td align="left">{name_cell}</td>'
                    f'<td align="left" port="out_{html.escape(col)}"><font color="#666666">{html.escape(ctype)}</font></td></tr>')
    dot.node(t, "<<table border=\"0\" cellborder=\"1\" cellspacing=\"0\" cellpadding=\"4\">" + "".join(rows) + "</table>>")

for t in tables:
    for fk in fkeys[t]:
        label = ", ".join(fk["from"]) if len(fk["from"]) > 1 else ""
        if fk["on_delete"] not in ("NO ACTION", None):
            label = (label + " " if label else "") + f"on delete {fk['on_delete'].lower()}"
        dot.edge(f"{t}:out_{fk['from'][0]}:e", f"{fk['table']}:in_{fk['to'][0]}:w", label=label)

with open(os.path.join(outputs, "schema.dot"), "w") as f:
    f.write(dot.source)
pdf = dot.pipe(format="pdf")
with open(os.path.join(outputs, "schema.pdf"), "wb") as f:
    f.write(pdf)

print(f"{name}: SQLite {sqlite3.sqlite_version}, {len(tables)} tables")
for t in tables:
    print(f"  {t:<12} {counts[t]:>6,} rows  {len(columns[t])} columns")
    for fk in fkeys[t]:
        print(f"    {', '.join(fk['from'])} -> {fk['table']}({', '.join(fk['to'])})")
print(f"foreign key check: {len(violations)} violations")
for table, rowid, parent, _fkid in violations[:20]:
    print(f"  {table} row {rowid}: no matching row in {parent}")
print("wrote schema.pdf, schema.dot")
