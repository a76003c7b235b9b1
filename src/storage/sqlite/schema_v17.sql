-- weft schema, version 17: third-party identifiers (3PIDs) bound through
-- this server.
--
-- threepid_bindings: a 3PID that `POST /account/3pid/bind` bound to a
-- local user at an identity server, so that unbinding it (`/3pid/unbind`,
-- `/3pid/delete`, deactivation) knows which identity servers to ask.
CREATE TABLE threepid_bindings (
    user_id   TEXT NOT NULL,
    medium    TEXT NOT NULL,
    address   TEXT NOT NULL,
    id_server TEXT NOT NULL,
    PRIMARY KEY (user_id, medium, address, id_server)
);
