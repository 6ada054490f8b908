"""Example on the analysis image: a spreadsheet and a CSV in, a recreated
chart and a summary workbook out.

    sandq enqueue examples/budget_report.py \\
        --input examples/budget.xlsx --input examples/actuals.csv --wait

budget.xlsx has a budget table and an Excel chart of it; actuals.csv lists
the expenses booked so far. The job finds the workbook's chart, reads the
cells its series point at, and draws it again with matplotlib, adding the
actual spending per month (budget_vs_actual.png). It writes the year to
date, per department and per month, to budget_summary.xlsx: formatted,
overspending in red, with a native Excel chart.

Arguments (optional): the workbook and the CSV, as names under $INPUT_DIR;
by default the first *.xlsx and the first *.csv there.
"""
import os
import sys

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter
from openpyxl import Workbook, load_workbook
from openpyxl.chart import BarChart, Reference
from openpyxl.formatting.rule import CellIsRule
from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.utils.cell import range_to_tuple

inputs = os.environ["INPUT_DIR"]
outputs = os.environ["OUTPUT_DIR"]


def find_input(ext, arg_index):
    if len(sys.argv) > arg_index:
        return os.path.join(inputs, sys.argv[arg_index])
    names = sorted(n for n in os.listdir(inputs) if n.lower().endswith(ext))
    if not names:
        sys.exit(f"no {ext} file among the inputs")
    return os.path.join(inputs, names[0])


def rich_text(title):
    """The plain text of a chart or axis title."""
    if title is None or title.tx is None or title.tx.rich is None:
        return ""
    return "".join(r.t for p in title.tx.rich.p for r in (p.r or []))


def cells(wb, ref):
    """The values of the cells a chart reference ('Sheet'!$B$2:$B$13) names."""
    sheet, (min_col, min_row, max_col, max_row) = range_to_tuple(ref)
    ws = wb[sheet]
    return [c.value for row in ws.iter_rows(min_row=min_row, max_row=max_row, min_col=min_col, max_col=max_col) for c in row]


def ref_of(data_source):
    return (data_source.numRef or data_source.strRef).f


# The workbook's chart: its kind, titles and the cells of its series.
xlsx_path, csv_path = find_input(".xlsx", 1), find_input(".csv", 2)
wb = load_workbook(xlsx_path, data_only=True)
found = [(ws.title, ch) for ws in wb.worksheets for ch in ws._charts]
if not found:
    sys.exit(f"{os.path.basename(xlsx_path)} has no chart to recreate")
sheet, chart = found[0]
title = rich_text(chart.title) or "Budget"
y_title = rich_text(chart.y_axis.title)
categories = cells(wb, ref_of(chart.series[0].cat))
budget = pd.DataFrame(
    {"".join(str(v) for v in cells(wb, s.tx.strRef.f)): cells(wb, ref_of(s.val)) for s in chart.series},
    index=pd.PeriodIndex(pd.to_datetime(categories), freq="M", name="month"),
).astype(float)
departments = list(budget.columns)
print(f"{os.path.basename(xlsx_path)}: {type(chart).__name__} \"{title}\" on sheet {sheet}, "
      f"{len(departments)} series x {len(budget)} months")

# The expenses, per month and department.
actuals = pd.read_csv(csv_path, parse_dates=["date"])
unknown = sorted(set(actuals["department"]) - set(departments))
if unknown:
    sys.exit(f"{os.path.basename(csv_path)}: departments not in the budget: {', '.join(unknown)}")
actuals["month"] = actuals["date"].dt.to_period("M")
actual = actuals.pivot_table(index="month", columns="department", values="amount", aggfunc="sum")
actual = actual.reindex(columns=departments).fillna(0.0).round(2)
print(f"{os.path.basename(csv_path)}: {len(actuals)} expenses, {actuals['date'].min():%Y-%m-%d} to {actuals['date'].max():%Y-%m-%d}")

# The chart again, with the actuals over the budget bars.
colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
fig, ax = plt.subplots(figsize=(11, 5.5))
x = np.arange(len(budget))
width = 0.8 / len(departments)
handles = []
for i, dept in enumerate(departments):
    handles.append(ax.bar(x + (i - (len(departments) - 1) / 2) * width, budget[dept], width,
                          color=colors[i], alpha=0.45, label=f"{dept} budget"))
    months = [budget.index.get_loc(m) for m in actual.index]
    handles += ax.plot(months, actual[dept], color=colors[i], marker="o", linewidth=2, label=f"{dept} actual")
ax.set_title(f"{title}\nbudget (bars) and actual spending (lines)")
ax.set_xticks(x, [m.strftime("%b") for m in budget.index])
ax.set_xlabel(rich_text(chart.x_axis.title) or "Month")
ax.set_ylabel(y_title)
ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
ax.grid(axis="y", alpha=0.3)
ax.set_ylim(0, max(budget.max().max(), actual.max().max()) * 1.25)  # room for the legend
ax.legend(handles=handles, ncol=len(departments), fontsize="small", loc="upper left")
fig.tight_layout()
fig.savefig(os.path.join(outputs, "budget_vs_actual.png"), dpi=120)

# The summary workbook: year to date, the months with actuals.
ytd_budget = budget.loc[actual.index].sum()
ytd_actual = actual.sum().round(2)
summary = pd.DataFrame({"Budget": ytd_budget, "Actual": ytd_actual})
summary["Variance"] = (summary["Actual"] - summary["Budget"]).round(2)
summary["Variance %"] = summary["Variance"] / summary["Budget"]
total = summary[["Budget", "Actual", "Variance"]].sum().round(2)
first, last = actual.index.min(), actual.index.max()
period = f"{first.strftime('%b')}-{last.strftime('%b %Y')}"

out = Workbook()
bold, header_fill = Font(bold=True), PatternFill("solid", fgColor="DDEBF7")
over = PatternFill("solid", fgColor="F8CBAD")
money, percent = "#,##0.00", "0.0%"

ws = out.active
ws.title = "Summary"
ws.append([f"Budget and actual spending, year to date ({period})"])
ws["A1"].font = Font(bold=True, size=13)
ws.append([])
ws.append(["Department", "Budget", "Actual", "Variance", "Variance %"])
for dept, r in summary.iterrows():
    ws.append([dept, r["Budget"], r["Actual"], r["Variance"], r["Variance %"]])
ws.append(["Total", total["Budget"], total["Actual"], total["Variance"], total["Variance"] / total["Budget"]])
last_row = ws.max_row
for cell in ws[3]:
    cell.font, cell.fill = bold, header_fill
    cell.alignment = Alignment(horizontal="center")
for cell in ws[last_row]:
    cell.font = bold
for row in ws.iter_rows(min_row=4, max_row=last_row, min_col=2, max_col=5):
    for cell in row[:3]:
        cell.number_format = money
    row[3].number_format = percent
ws.conditional_formatting.add(f"D4:E{last_row}", CellIsRule(operator="greaterThan", formula=["0"], fill=over))
ws.column_dimensions["A"].width = 16
for col in "BCDE":
    ws.column_dimensions[col].width = 15
ws.freeze_panes = "A4"

bars = BarChart()
bars.type, bars.grouping = "col", "clustered"
bars.title = f"Budget and actual, {period}"
bars.y_axis.title = y_title
bars.x_axis.delete = bars.y_axis.delete = False
bars.add_data(Reference(ws, min_col=2, max_col=3, min_row=3, max_row=last_row - 1), titles_from_data=True)
bars.set_categories(Reference(ws, min_col=1, min_row=4, max_row=last_row - 1))
bars.width, bars.height = 16, 8
ws.add_chart(bars, f"A{last_row + 3}")

ws = out.create_sheet("By month")
header = ["Month"] + [f"{d} {kind}" for d in departments for kind in ("budget", "actual", "variance")]
ws.append(header)
for month in budget.index:
    row = [month.to_timestamp().to_pydatetime()]
    for dept in departments:
        b = float(budget.at[month, dept])
        a = float(actual.at[month, dept]) if month in actual.index else None
        row += [b, a, None if a is None else round(a - b, 2)]
    ws.append(row)
for cell in ws[1]:
    cell.font, cell.fill = bold, header_fill
    cell.alignment = Alignment(horizontal="center", wrap_text=True)
for row in ws.iter_rows(min_row=2):
    row[0].number_format = "mmm yyyy"
    for cell in row[1:]:
        cell.number_format = money
for i in range(len(departments)):
    col = ws.cell(row=1, column=4 + 3 * i).column_letter
    ws.conditional_formatting.add(f"{col}2:{col}{ws.max_row}", CellIsRule(operator="greaterThan", formula=["0"], fill=over))
ws.column_dimensions["A"].width = 11
for i in range(2, len(header) + 1):
    ws.column_dimensions[ws.cell(row=1, column=i).column_letter].width = 13
ws.row_dimensions[1].height = 30
ws.freeze_panes = "B2"
out.save(os.path.join(outputs, "budget_summary.xlsx"))

pct = total["Variance"] / total["Budget"]
print(f"year to date ({period}): budget {total['Budget']:,.2f}, actual {total['Actual']:,.2f}, "
      f"variance {total['Variance']:+,.2f} ({pct:+.1%})")
for dept, r in summary.iterrows():
    state = "over" if r["Variance"] > 0 else "under"
    print(f"  {dept:<12} {state} budget by {abs(r['Variance']):,.2f} ({r['Variance %']:+.1%})")
print(f"matplotlib {matplotlib.__version__} ({matplotlib.get_backend()}), pandas {pd.__version__}")
print("wrote budget_vs_actual.png, budget_summary.xlsx")
