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


def make_signups(path: str, rows: int = 5000) -> None:
    """Sign-ups for the data-quality example: a few break each of the seed's rules."""
    rng = random.Random(13)
    start = datetime(2026, 2, 1)
    with open(path, "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["id", "email", "created_at", "age", "customer_id"])
        for i in range(1, rows + 1):
            email = f"user{i}@example.com"
            if i % 250 == 0:
                email = f"user{i}.example.com"              # format
            if i % 333 == 0:
                email = ""                                  # completeness
            if i % 400 == 0:
                email = f"user{i - 1}@example.com"          # uniqueness
            age = rng.randint(16, 90) if i % 150 else 151   # range (a warning)
            customer = rng.randint(1, 2000) if i % 500 else 99999   # referential
            out.writerow([i, email, (start + timedelta(minutes=i)).isoformat(sep=" "), age, customer])


def main() -> None:
    os.makedirs(DATA, exist_ok=True)
    make_customers(os.path.join(DATA, "crm.db"))
    make_orders(os.path.join(DATA, "orders"))
    make_signups(os.path.join(DATA, "signups.csv"))
    print(f"demo data in {DATA}")


if __name__ == "__main__":
    main()
