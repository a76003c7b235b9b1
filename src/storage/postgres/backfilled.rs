//! A page of backfilled history written in a few statements whatever its
//! length: one insert per table for the whole page (`unnest` of arrays), in
//! place of the statements per event of [`super::events::persist_timeline_event`].
//! What ends up stored is what writing the events one after the other in
//! the page's order would store (the conformance suite checks both ways).

use std::collections::HashMap;

use ruma::OwnedEventId;

use super::{GenericClient, big, col, events, exec, now_ms, parse, query, state};
use crate::storage::{NewTimelineEvent, Persisted, Result, StateWrite, StorageError, TimelineStatus};

/// Whether `new` can be written as a batch: backfilled events that change
/// no current state and carry no client transaction or expiry.
pub fn batchable(new: &[NewTimelineEvent]) -> bool {
    new.len() > 1
        && new.iter().all(|e| {
            e.backfilled
                && e.current_state.is_none()
                && e.txn.is_none()
                && e.expires_at.is_none()
                && e.notifications.is_empty()
        })
}

/// Writes [`batchable`] events, in order.
pub async fn persist(tx: &impl GenericClient, new: &[NewTimelineEvent]) -> Result<Vec<Persisted>> {
    let room_id = &new[0].pdu.room_id;
    if new.iter().any(|e| e.pdu.room_id != *room_id) {
        return Err(StorageError::Database("a backfilled page spans rooms".to_owned()));
    }
    let index: HashMap<&OwnedEventId, usize> = new.iter().enumerate().map(|(i, e)| (&e.pdu.event_id, i)).collect();

    // State groups, event by event: the state before an event may be the
    // state after an earlier one of the page.
    let mut groups: Vec<(i64, i64)> = Vec::with_capacity(new.len());
    for event in new {
        let pdu = &event.pdu;
        let before = match &event.state_before {
            StateWrite::AfterEvent(id) if index.get(id).is_some_and(|&i| i < groups.len()) => groups[index[id]].1,
            write => state::write_state(tx, &pdu.room_id, write).await?,
        };
        let after = events::state_after(tx, pdu, before).await?;
        if let Some(version) = crate::storage::created_room_version(pdu) {
            events::add_room(tx, pdu.room_id.as_str(), &version).await?;
        }
        groups.push((before, after));
    }

    // Positions: the sequence counts down, the page is newest first.
    let mut positions: Vec<i64> = query(
        tx,
        "SELECT nextval('backfill_stream') FROM generate_series(1, $1::bigint)",
        &[&(new.len() as i64)],
    )
    .await?
    .iter()
    .map(|r| col(r, 0))
    .collect::<Result<_>>()?;
    positions.sort_unstable_by(|a, b| b.cmp(a));

    insert_rows(tx, new, &groups, &positions).await?;
    insert_edges(tx, new).await?;
    let earlier = earlier_redactions(tx, new, &index).await?;

    Ok(new
        .iter()
        .zip(groups)
        .zip(positions)
        .zip(earlier)
        .map(
            |(((_, (before, after)), stream_ordering), earlier_redactions)| Persisted {
                stream_ordering,
                state_group_before: before,
                state_group_after: after,
                current_state_group: None,
                earlier_redactions,
                forward_extremity: false,
                pushes_queued: false,
            },
        )
        .collect())
}

/// The events' rows, in one statement; an outlier among them is replaced
/// (as [`events`]' single insert does). Any event held in the timeline
/// already fails the whole page, as one by one it would.
async fn insert_rows(
    tx: &impl GenericClient,
    new: &[NewTimelineEvent],
    groups: &[(i64, i64)],
    positions: &[i64],
) -> Result<()> {
    let n = new.len();
    let columns = events::PduArrays::of(new.iter().map(|event| &*event.pdu));
    let (mut rejected, mut soft_failed, mut replaces) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for event in new {
        let (r, s) = event.status.row_flags();
        rejected.push(r);
        soft_failed.push(s);
        replaces.push(event.replaces_state.as_ref().map(|e| e.as_str()));
    }
    let befores: Vec<i64> = groups.iter().map(|g| g.0).collect();
    let afters: Vec<i64> = groups.iter().map(|g| g.1).collect();
    let written = exec(
        tx,
        &format!(
            "INSERT INTO events ({})
         SELECT x.pos, x.id, $2, x.type, x.key, x.sender, x.depth, x.ts, $3, x.json, FALSE, x.rejected,
                x.soft_failed, x.before, x.after, x.replaces
         FROM unnest($1::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], $8::bigint[], $9::bigint[],
                     $10::text[], $11::text[], $12::boolean[], $13::bigint[], $14::bigint[], $15::text[])
             AS x(pos, id, type, key, sender, depth, ts, json, rejected, soft_failed, before, after, replaces)
         {}
         RETURNING {}",
            events::EVENT_COLUMNS,
            events::REPLACE_OUTLIER,
            events::OUTLIER_REPLACED,
        ),
        &[
            &positions,
            &new[0].pdu.room_id.as_str(),
            &now_ms(),
            &columns.ids,
            &columns.types,
            &columns.keys,
            &columns.senders,
            &columns.depths,
            &columns.ts,
            &columns.jsons,
            &rejected,
            &soft_failed,
            &befores,
            &afters,
            &replaces,
        ],
    )
    .await?;
    if written != n as u64 {
        return Err(StorageError::AlreadyExists);
    }
    Ok(())
}

/// The page's DAG and auth edges, its redactions, and the room's backward
/// extremities: the parents neither held in the timeline nor in the page
/// become ones (at the depth below the first child of the page naming
/// them), the page's own events stop being ones. Backfilled events are
/// never forward extremities.
async fn insert_edges(tx: &impl GenericClient, new: &[NewTimelineEvent]) -> Result<()> {
    let (mut children, mut parents, mut child_depths) = (Vec::new(), Vec::new(), Vec::new());
    let (mut authed, mut auths) = (Vec::new(), Vec::new());
    let (mut redactions, mut targets) = (Vec::new(), Vec::new());
    for event in new {
        let pdu = &event.pdu;
        for prev in &pdu.prev_events {
            children.push(pdu.event_id.as_str());
            parents.push(prev.as_str());
            child_depths.push(big(pdu.depth) - 1);
        }
        for auth in &pdu.auth_events {
            authed.push(pdu.event_id.as_str());
            auths.push(auth.as_str());
        }
        if event.status == TimelineStatus::Accepted
            && let Some(target) = &pdu.redacts
        {
            redactions.push(pdu.event_id.as_str());
            targets.push(target.as_str());
        }
    }
    let page: Vec<&str> = new.iter().map(|e| e.pdu.event_id.as_str()).collect();
    exec(
        tx,
        "WITH prevs AS (
             SELECT * FROM unnest($2::text[], $3::text[], $4::bigint[]) WITH ORDINALITY AS p(child, prev, depth, n)
         ), edges AS (
             INSERT INTO event_edges (event_id, prev_event_id, room_id)
             SELECT child, prev, $1 FROM prevs ON CONFLICT DO NOTHING
         ), auth AS (
             INSERT INTO event_auth (event_id, auth_event_id)
             SELECT * FROM unnest($5::text[], $6::text[]) ON CONFLICT DO NOTHING
         ), redacted AS (
             INSERT INTO redactions (redacts, event_id)
             SELECT t, r FROM unnest($8::text[], $7::text[]) AS x(r, t) ON CONFLICT DO NOTHING
         ), parents_missing AS (
             INSERT INTO backward_extremities (room_id, event_id, depth)
             SELECT DISTINCT ON (prev) $1, prev, depth FROM prevs
             WHERE NOT (prev = ANY($9::text[]))
                 AND (SELECT NOT e.outlier FROM events e WHERE e.event_id = prev) IS NOT TRUE
             ORDER BY prev, n
             ON CONFLICT DO NOTHING
         )
         DELETE FROM backward_extremities WHERE room_id = $1 AND event_id = ANY($9::text[])",
        &[
            &new[0].pdu.room_id.as_str(),
            &children,
            &parents,
            &child_depths,
            &authed,
            &auths,
            &targets,
            &redactions,
            &page,
        ],
    )
    .await?;
    Ok(())
}

/// For each event, the accepted redactions of it held before it was
/// written: those stored earlier and those of the page before it.
async fn earlier_redactions(
    tx: &impl GenericClient,
    new: &[NewTimelineEvent],
    index: &HashMap<&OwnedEventId, usize>,
) -> Result<Vec<Vec<OwnedEventId>>> {
    let page: Vec<&str> = new.iter().map(|e| e.pdu.event_id.as_str()).collect();
    let mut earlier = vec![Vec::new(); new.len()];
    for row in query(
        tx,
        "SELECT r.redacts, r.event_id FROM unnest($1::text[]) AS page (id),
             LATERAL (SELECT redacts, event_id FROM redactions WHERE redacts = page.id OFFSET 0) r
         WHERE r.event_id != r.redacts",
        &[&page],
    )
    .await?
    {
        let target: OwnedEventId = parse(col::<String>(&row, 0)?)?;
        let redaction: OwnedEventId = parse(col::<String>(&row, 1)?)?;
        let Some(&i) = index.get(&target) else { continue };
        if index.get(&redaction).is_some_and(|&j| j > i) {
            continue;
        }
        earlier[i].push(redaction);
    }
    for list in &mut earlier {
        list.sort();
    }
    Ok(earlier)
}
