"""Create the demo's inputs: order CSV files (with a few malformed rows) and a SQLite
CRM database of customers. Deterministic; safe to run again."""
from __future__ import annotations

import csv
import os
import random
import sqlite3
from datetime import datetime, timedelta

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
COUNTRIES = ["DE", "FR", "US", "JP", "BR", "IN"]
SEGMENTS = ["consumer", "smb", "enterprise"]
STATUSES = ["paid", "paid", "shipped", "cancelled", "pending"]


def make_customers(path: str, n: int = 2000) -> None:
    rng = random.Random(7)
    if os.path.exists(path):
        os.remove(path)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, email TEXT, age INTEGER, "
                   "country TEXT, segment TEXT, updated_at TEXT)")
        start = datetime(2026, 1, 1)
        db.executemany("INSERT INTO customers VALUES (?, ?, ?, ?, ?, ?, ?)", [
            (i, f"Customer {i}", f"  Customer{i}@Example.COM ", rng.randint(12, 80), rng.choice(COUNTRIES),
             rng.choice(SEGMENTS), (start + timedelta(minutes=i)).isoformat(sep=" "))
            for i in range(1, n + 1)])


def make_orders(folder: str, files: int = 3, rows: int = 20000) -> None:
    rng = random.Random(11)
    os.makedirs(folder, exist_ok=True)
    start = datetime(2026, 3, 1)
    order_id = 0
    for f in range(files):
        with open(os.path.join(folder, f"orders-{f:03d}.csv"), "w", newline="") as handle:
            out = csv.writer(handle)
            out.writerow(["order_id", "customer_id", "email", "status", "price", "quantity", "discount",
                          "ordered_at"])
            for _ in range(rows):
                order_id += 1
                quantity = rng.randint(1, 5) if order_id % 5000 else "two"   # a few malformed rows
                out.writerow([order_id, rng.randint(1, 2000), f" Buyer{order_id}@Shop.EXAMPLE ",
                              rng.choice(STATUSES), round(rng.uniform(1, 500), 2), quantity,
                              rng.choice([0, 0, 0.1, 0.25]),
                              (start + timedelta(seconds=order_id * 7)).isoformat(sep=" ")])


def main() -> None:
    os.makedirs(DATA, exist_ok=True)
    make_customers(os.path.join(DATA, "crm.db"))
    make_orders(os.path.join(DATA, "orders"))
    print(f"demo data in {DATA}")


if __name__ == "__main__":
    main()
