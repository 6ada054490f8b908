-- A small shop database: what examples/shop.db is made of.
-- examples/make_example_inputs.py runs it with Python's sqlite3 module on
-- the analysis image (the same SQLite as its sqlite3 shell):
--   sandq enqueue examples/make_example_inputs.py --input examples/shop.sql --wait
-- examples/schema_diagram.py draws its tables and foreign keys.
PRAGMA foreign_keys = ON;
BEGIN;

CREATE TABLE categories (
    id        INTEGER PRIMARY KEY,
    name      TEXT NOT NULL UNIQUE,
    parent_id INTEGER REFERENCES categories(id)
);

CREATE TABLE products (
    id          INTEGER PRIMARY KEY,
    sku         TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    category_id INTEGER NOT NULL REFERENCES categories(id),
    unit_price  NUMERIC NOT NULL CHECK (unit_price >= 0)
);

CREATE TABLE customers (
    id         INTEGER PRIMARY KEY,
    email      TEXT NOT NULL UNIQUE,
    name       TEXT NOT NULL,
    country    TEXT NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE addresses (
    id          INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
    line1       TEXT NOT NULL,
    city        TEXT NOT NULL,
    postcode    TEXT NOT NULL
);

CREATE TABLE orders (
    id                  INTEGER PRIMARY KEY,
    customer_id         INTEGER NOT NULL REFERENCES customers(id),
    shipping_address_id INTEGER REFERENCES addresses(id),
    ordered_at          TEXT NOT NULL,
    status              TEXT NOT NULL CHECK (status IN ('open', 'paid', 'shipped', 'cancelled'))
);

CREATE TABLE order_items (
    order_id   INTEGER NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
    product_id INTEGER NOT NULL REFERENCES products(id),
    quantity   INTEGER NOT NULL CHECK (quantity > 0),
    unit_price NUMERIC NOT NULL,
    PRIMARY KEY (order_id, product_id)
);

CREATE TABLE payments (
    id       INTEGER PRIMARY KEY,
    order_id INTEGER NOT NULL REFERENCES orders(id),
    amount   NUMERIC NOT NULL,
    method   TEXT NOT NULL,
    paid_at  TEXT NOT NULL
);

CREATE INDEX orders_by_customer ON orders(customer_id);
CREATE INDEX order_items_by_product ON order_items(product_id);

INSERT INTO categories (id, name, parent_id) VALUES
    (1, 'Hardware', NULL),
    (2, 'Fasteners', 1),
    (3, 'Tools', 1),
    (4, 'Garden', NULL),
    (5, 'Watering', 4);

INSERT INTO products (id, sku, name, category_id, unit_price) VALUES
    (1, 'FST-001', 'Wood screws 4x40 (200)', 2, 6.90),
    (2, 'FST-002', 'Wall plugs 8mm (100)', 2, 4.50),
    (3, 'TLS-010', 'Cordless drill', 3, 89.00),
    (4, 'TLS-011', 'Bit set (32)', 3, 19.90),
    (5, 'GRD-100', 'Garden hose 25m', 5, 34.50),
    (6, 'GRD-101', 'Hose reel', 5, 49.00),
    (7, 'GRD-200', 'Pruning shears', 4, 22.00);

INSERT INTO customers (id, email, name, country, created_at) VALUES
    (1, 'ada@example.com', 'Ada Byron', 'GB', '2026-01-04'),
    (2, 'grace@example.com', 'Grace Hopper', 'US', '2026-01-19'),
    (3, 'emmy@example.com', 'Emmy Noether', 'DE', '2026-02-02'),
    (4, 'alan@example.com', 'Alan Turing', 'GB', '2026-03-11');

INSERT INTO addresses (id, customer_id, line1, city, postcode) VALUES
    (1, 1, '12 St James''s Square', 'London', 'SW1Y 4JH'),
    (2, 2, '1 Navy Yard', 'Arlington', '22202'),
    (3, 3, 'Bunsenstrasse 3', 'Goettingen', '37073'),
    (4, 4, '2 Bletchley Park', 'Milton Keynes', 'MK3 6EB'),
    (5, 1, '7 Marylebone Rd', 'London', 'NW1 5LR');

INSERT INTO orders (id, customer_id, shipping_address_id, ordered_at, status) VALUES
    (1, 1, 1, '2026-02-01', 'shipped'),
    (2, 2, 2, '2026-02-14', 'shipped'),
    (3, 3, 3, '2026-03-02', 'paid'),
    (4, 1, 5, '2026-03-20', 'paid'),
    (5, 4, 4, '2026-04-05', 'open'),
    (6, 2, 2, '2026-04-09', 'cancelled');

INSERT INTO order_items (order_id, product_id, quantity, unit_price) VALUES
    (1, 3, 1, 89.00), (1, 4, 1, 19.90), (1, 1, 2, 6.90),
    (2, 5, 1, 34.50), (2, 6, 1, 49.00),
    (3, 2, 3, 4.50), (3, 7, 1, 22.00),
    (4, 1, 1, 6.90),
    (5, 3, 1, 89.00), (5, 5, 2, 34.50),
    (6, 7, 1, 22.00);

INSERT INTO payments (id, order_id, amount, method, paid_at) VALUES
    (1, 1, 122.70, 'card', '2026-02-01'),
    (2, 2, 83.50, 'card', '2026-02-14'),
    (3, 3, 35.50, 'invoice', '2026-03-09'),
    (4, 4, 6.90, 'card', '2026-03-20');

COMMIT;
