-- weft schema, version 3: transactions between servers.

-- Transactions received: a retried /send gets the answer it got first.
CREATE TABLE received_transactions (
    origin      TEXT NOT NULL,
    txn_id      TEXT NOT NULL,
    response    TEXT NOT NULL,
    received_ts INTEGER NOT NULL,
    PRIMARY KEY (origin, txn_id)
) WITHOUT ROWID;

-- Events waiting to be sent to another server, in order. A row goes when
-- the destination has acknowledged the transaction that carried it, so a
-- kill -9 or a peer's outage loses nothing.
CREATE TABLE outbound_pdus (
    destination TEXT NOT NULL,
    position    INTEGER NOT NULL,
    event_id    TEXT NOT NULL,
    queued_ts   INTEGER NOT NULL,
    PRIMARY KEY (destination, position)
) WITHOUT ROWID;
