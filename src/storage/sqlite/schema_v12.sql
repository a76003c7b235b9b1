-- weft schema, version 12: application services.
--
-- appservice_queue: the events each application service is to be sent, in
-- the order they were queued; a row goes when the application service has
-- acknowledged the transaction that carried it (so the queue outlives a
-- restart and a service that is down). Positions are never reused
-- (AUTOINCREMENT): the last one of a transaction is its ID.
CREATE TABLE appservice_queue (
    position   INTEGER PRIMARY KEY AUTOINCREMENT,
    appservice TEXT NOT NULL,
    event_id   TEXT NOT NULL
);
CREATE INDEX appservice_queue_by_service ON appservice_queue (appservice, position);

-- The rooms an application service published in its own room directory
-- lists, one per network it bridges (PUT /directory/list/appservice/...).
CREATE TABLE appservice_room_list (
    appservice TEXT NOT NULL,
    network_id TEXT NOT NULL,
    room_id    TEXT NOT NULL,
    PRIMARY KEY (appservice, network_id, room_id)
);
