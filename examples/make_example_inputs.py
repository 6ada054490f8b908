"""Makes the examples' binary inputs, byte for byte the same on every run:

    budget.xlsx   a budget workbook: sheet "Budget" (month x department) and
                  an Excel column chart of it ("Monthly budget by department")
    actuals.csv   the expenses booked so far (January to September 2026)
    shop.db       a SQLite database, from shop.sql (given as an input)

Run it on the analysis image and save its outputs into examples/:
    sandq enqueue examples/make_example_inputs.py --input examples/shop.sql --wait
The random numbers come from a fixed seed; the workbook's timestamps (its
document properties and the dates inside its zip) are fixed too, so the
files only change when this script, shop.sql or the image's openpyxl,
Python or SQLite do.
"""
import csv
import datetime
import io
import os
import random
import sqlite3
import zipfile

from openpyxl import Workbook
from openpyxl.chart import BarChart, Reference
from openpyxl.styles import Font

inputs = os.environ["INPUT_DIR"]
outputs = os.environ["OUTPUT_DIR"]
rng = random.Random(2026)
FIXED = datetime.datetime(2026, 1, 1)

DEPARTMENTS = ["Marketing", "Engineering", "Operations"]
MONTHS = [datetime.date(2026, m, 1) for m in range(1, 13)]


def monthly_budget(dept, month):
    m = month.month
    if dept == "Marketing":  # campaigns in spring and before the holidays
        return 40000 + (15000 if m in (3, 4, 10, 11) else 0)
    if dept == "Engineering":  # grows with hiring
        return 110000 + 2500 * (m - 1)
    return 36000  # Operations


# budget.xlsx
wb = Workbook()
wb.properties.creator = "sandq examples"
wb.properties.created = wb.properties.modified = FIXED
ws = wb.active
ws.title = "Budget"
ws.append(["Month"] + DEPARTMENTS)
for cell in ws[1]:
    cell.font = Font(bold=True)
for month in MONTHS:
    ws.append([month] + [monthly_budget(d, month) for d in DEPARTMENTS])
for row in ws.iter_rows(min_row=2):
    row[0].number_format = "mmm yyyy"
    for cell in row[1:]:
        cell.number_format = "#,##0"
ws.column_dimensions["A"].width = 12
for col in "BCD":
    ws.column_dimensions[col].width = 13

chart = BarChart()
chart.type, chart.grouping = "col", "clustered"
chart.title = "Monthly budget by department"
chart.y_axis.title = "EUR"
chart.x_axis.title = "Month"
chart.x_axis.number_format = "mmm"
chart.x_axis.delete = chart.y_axis.delete = False
chart.add_data(Reference(ws, min_col=2, max_col=4, min_row=1, max_row=13), titles_from_data=True)
chart.set_categories(Reference(ws, min_col=1, min_row=2, max_row=13))
chart.width, chart.height = 22, 11
ws.add_chart(chart, "F2")

buf = io.BytesIO()
wb.save(buf)
# openpyxl stamps each zip entry with the current time: copy the entries
# into a new zip with a fixed one.
with zipfile.ZipFile(buf) as src, zipfile.ZipFile(os.path.join(outputs, "budget.xlsx"), "w") as dst:
    for info in src.infolist():
        fixed = zipfile.ZipInfo(info.filename, date_time=(2026, 1, 1, 0, 0, 0))
        fixed.compress_type = zipfile.ZIP_DEFLATED
        fixed.external_attr = 0o644 << 16
        dst.writestr(fixed, src.read(info.filename))

# actuals.csv: 6 to 10 expenses per department and month, adding up to
# the month's budget give or take 15%, January to September.
ITEMS = {
    "Marketing": ["Search ads", "Social ads", "Trade fair booth", "Print flyers", "Agency retainer", "Sponsorship"],
    "Engineering": ["Salaries (contractors)", "Cloud hosting", "Laptops", "Software licences", "Test devices", "Training"],
    "Operations": ["Office rent", "Utilities", "Shipping", "Cleaning", "Insurance", "Office supplies"],
}
rows = []
for month in MONTHS[:9]:
    days = (MONTHS[month.month] - month).days  # the next month's first day minus this one's
    for dept in DEPARTMENTS:
        total = monthly_budget(dept, month) * rng.uniform(0.85, 1.15)
        n = rng.randint(6, 10)
        weights = [rng.random() + 0.2 for _ in range(n)]
        for w in weights:
            day = month + datetime.timedelta(days=rng.randrange(days))
            rows.append((day.isoformat(), dept, rng.choice(ITEMS[dept]), round(total * w / sum(weights), 2)))
rows.sort()
with open(os.path.join(outputs, "actuals.csv"), "w", newline="") as f:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(["date", "department", "description", "amount"])
    for date, dept, item, amount in rows:
        w.writerow([date, dept, item, f"{amount:.2f}"])

# shop.db, made in /work (the journal must not become an output) and copied.
db = "/work/shop.db"
con = sqlite3.connect(db)
with open(os.path.join(inputs, "shop.sql")) as f:
    con.executescript(f.read())
con.close()
with open(db, "rb") as src, open(os.path.join(outputs, "shop.db"), "wb") as dst:
    dst.write(src.read())

print(f"budget.xlsx: {len(MONTHS)} months x {len(DEPARTMENTS)} departments, with a chart")
print(f"actuals.csv: {len(rows)} expenses")
print(f"shop.db: SQLite {sqlite3.sqlite_version}")
