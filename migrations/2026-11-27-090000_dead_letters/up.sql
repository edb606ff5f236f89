-- Engine events and result messages the settlement worker refused (an order the marketplace
-- does not know, an undecodable message, a bid without escrow, an effect a ledger rule refuses).
-- Written in the transaction that records the event (or message) in processed_events, so each
-- is recorded exactly once and the message is acked: never redelivered forever, never dropped
-- silently. Read-only evidence: the worker only inserts.
CREATE TABLE dead_letters (
    id uuid PRIMARY KEY,
    -- The processed_events row recorded with it (`<market>.<event seq>` for an event,
    -- `<stream>#<stream seq>` for a whole message).
    consumer text NOT NULL,
    event_id text NOT NULL,
    -- Where it came from: the JetStream stream, the subject, the message's stream sequence.
    stream text NOT NULL,
    subject text NOT NULL,
    stream_seq bigint CHECK (stream_seq > 0),
    -- The refused event (NULL when the whole message was refused).
    event_seq bigint CHECK (event_seq > 0),
    market text,
    reason text NOT NULL CHECK (reason IN ('undecodable', 'malformed', 'unknown_order',
        'no_escrow', 'invalid_event', 'ledger_refused', 'unknown_assignment', 'foreign_result')),
    detail text NOT NULL,
    -- The message bytes as received when it could not be decoded; otherwise the refused event
    -- (JSON, as decoded from its frame).
    payload bytea NOT NULL,
    -- What was done about the escrow: 'released' = units [unit_start, unit_start + units) of
    -- escrow order order_id (job job_id) went back to the studio.
    escrow_action text NOT NULL CHECK (escrow_action IN ('untouched', 'released')),
    order_id uuid,
    job_id uuid,
    unit_start bigint CHECK (unit_start >= 0),
    units bigint NOT NULL DEFAULT 0 CHECK (units >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (consumer, event_id),
    FOREIGN KEY (consumer, event_id) REFERENCES processed_events (consumer, event_id),
    CHECK ((escrow_action = 'released') = (units > 0 AND order_id IS NOT NULL AND unit_start IS NOT NULL))
);
CREATE INDEX dead_letters_created ON dead_letters (created_at DESC);
CREATE INDEX dead_letters_job ON dead_letters (job_id) WHERE job_id IS NOT NULL;
