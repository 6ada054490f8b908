"""Example analysis job: a sales CSV in, a chart and a summary out.

Run it with
    sandq enqueue examples/sales_summary.py --input examples/sales.csv --wait
Inputs are read from $INPUT_DIR (/mnt/inputs); whatever is written to
$OUTPUT_DIR (/mnt/outputs) comes back as download links.
"""
import csv
import json
import os
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

inputs = os.environ["INPUT_DIR"]
outputs = os.environ["OUTPUT_DIR"]

revenue = defaultdict(float)  # (month, region) -> revenue
by_product = defaultdict(float)
rows = 0
with open(os.path.join(inputs, "sales.csv"), newline="") as f:
    for row in csv.DictReader(f):
        amount = int(row["units"]) * float(row["unit_price"])
        revenue[(row["date"][:7], row["region"])] += amount
        by_product[row["product"]] += amount
        rows += 1

months = sorted({m for m, _ in revenue})
regions = sorted({r for _, r in revenue})

fig, ax = plt.subplots(figsize=(9, 5))
for region in regions:
    ax.plot(months, [revenue[(m, region)] for m in months], marker="o", label=region)
ax.set_title("Monthly revenue by region")
ax.set_xlabel("month")
ax.set_ylabel("revenue")
ax.tick_params(axis="x", rotation=45)
ax.legend()
fig.tight_layout()
fig.savefig(os.path.join(outputs, "revenue_by_region.png"), dpi=120)

total = sum(by_product.values())
summary = {
    "rows": rows,
    "total_revenue": round(total, 2),
    "revenue_by_product": {p: round(v, 2) for p, v in sorted(by_product.items())},
    "revenue_by_region": {r: round(sum(revenue[(m, r)] for m in months), 2) for r in regions},
    "best_month": max(months, key=lambda m: sum(revenue[(m, r)] for r in regions)),
}
with open(os.path.join(outputs, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)

with open(os.path.join(outputs, "summary.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["month"] + regions + ["total"])
    for m in months:
        vals = [round(revenue[(m, r)], 2) for r in regions]
        w.writerow([m] + vals + [round(sum(vals), 2)])

print(f"read {rows} rows; total revenue {total:,.2f}")
print("best month:", summary["best_month"])
