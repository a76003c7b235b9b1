//! `impl Storage for PgStorage`: each call is one statement or one
//! transaction of the modules beside this one.

use std::{collections::HashSet, sync::Arc};

use async_trait::async_trait;
use ruma::{
    DeviceId, EventId, OwnedEventId, OwnedRoomAliasId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomAliasId, RoomId,
    RoomVersionId, ServerName, UserId, events::StateEventType,
};

use super::{PgStorage, account_data, accounts, events, exec, history, keys, pg_write, presence, state, transactions};
use crate::{
    events::Pdu,
    storage::{
        AccountData, Device, Direction, Membership, NewTimelineEvent, Persisted, PresenceChange, PresenceRecord,
        PresenceWrite, Receipt, RemoteInvite, Result, RoomInfo, RoomTyping, ServerKey, StateGroupId, StateKey,
        StateWrite, Storage, StoredEvent, StoredGroup, StreamOrdering, TokenOwner, TopoKey, TxnKey, Typing, UserRecord,
        push::place_of,
    },
};

#[async_trait]
impl Storage for PgStorage {
    async fn create_user(&self, user: UserRecord) -> Result<()> {
        pg_write!(self, |tx| {
            accounts::create_user(&tx, &user).await?;
            super::user_directory::local_profile_changed(&tx, &user.user_id).await?
        })
    }

    async fn user(&self, user_id: &UserId) -> Result<Option<UserRecord>> {
        accounts::user(&self.client().await?, user_id).await
    }

    async fn set_password_hash(&self, user_id: &UserId, hash: &str) -> Result<()> {
        pg_write!(self, |tx| accounts::set_password_hash(&tx, user_id, hash).await?)
    }

    async fn erase_user(&self, user_id: &UserId) -> Result<()> {
        pg_write!(self, |tx| accounts::erase_user(&tx, user_id).await?)
    }

    async fn erased_users(&self, users: &[OwnedUserId]) -> Result<HashSet<OwnedUserId>> {
        accounts::erased_users(&self.client().await?, users).await
    }

    async fn upgrade_guest(&self, user_id: &UserId, hash: &str) -> Result<()> {
        pg_write!(self, |tx| accounts::upgrade_guest(&tx, user_id, hash).await?)
    }

    async fn set_profile(
        &self,
        user_id: &UserId,
        displayname: Option<Option<&str>>,
        avatar_url: Option<Option<&str>>,
    ) -> Result<()> {
        let displayname = displayname.map(|d| d.map(str::to_owned));
        let avatar_url = avatar_url.map(|a| a.map(str::to_owned));
        pg_write!(self, |tx| {
            accounts::set_profile(&tx, user_id, displayname.clone(), avatar_url.clone()).await?;
            super::user_directory::local_profile_changed(&tx, user_id).await?
        })
    }

    async fn create_session(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        display_name: Option<&str>,
        token: &str,
    ) -> Result<()> {
        pg_write!(self, |tx| accounts::create_session(
            &tx,
            user_id,
            device_id,
            display_name,
            token
        )
        .await?)
    }

    async fn token_owner(&self, token: &str) -> Result<Option<TokenOwner>> {
        accounts::token_owner(&self.client().await?, token).await
    }

    async fn delete_token(&self, token: &str) -> Result<()> {
        pg_write!(self, |tx| accounts::delete_token(&tx, token).await?)
    }

    async fn delete_all_tokens(&self, user_id: &UserId) -> Result<()> {
        pg_write!(self, |tx| accounts::delete_all_tokens(&tx, user_id).await?)
    }

    async fn devices(&self, user_id: &UserId) -> Result<Vec<Device>> {
        accounts::devices(&self.client().await?, user_id).await
    }

    async fn device_seen(&self, user_id: &UserId, device_id: &DeviceId, seen: &crate::connections::Seen) -> Result<()> {
        pg_write!(one self, |c| accounts::device_seen(&c, user_id, device_id, seen).await?)
    }

    async fn save_filter(&self, user_id: &UserId, filter: &str) -> Result<String> {
        pg_write!(self, |tx| accounts::save_filter(&tx, user_id, filter).await?)
    }

    async fn filter(&self, user_id: &UserId, filter_id: &str) -> Result<Option<String>> {
        accounts::filter(&self.client().await?, user_id, filter_id).await
    }

    async fn create_alias(&self, alias: &RoomAliasId, room_id: &RoomId, creator: &UserId) -> Result<()> {
        pg_write!(self, |tx| accounts::create_alias(&tx, alias, room_id, creator).await?)
    }

    async fn resolve_alias(&self, alias: &RoomAliasId) -> Result<Option<(OwnedRoomId, OwnedUserId)>> {
        accounts::resolve_alias(&self.client().await?, alias).await
    }

    async fn delete_alias(&self, alias: &RoomAliasId) -> Result<bool> {
        pg_write!(self, |tx| accounts::delete_alias(&tx, alias).await?)
    }

    async fn room_aliases(&self, room_id: &RoomId) -> Result<Vec<OwnedRoomAliasId>> {
        accounts::room_aliases(&self.client().await?, room_id).await
    }

    async fn move_aliases(&self, old: &RoomId, new: &RoomId) -> Result<Vec<OwnedRoomAliasId>> {
        pg_write!(self, |tx| accounts::move_aliases(&tx, old, new).await?)
    }

    async fn set_room_published(&self, room_id: &RoomId, published: bool) -> Result<()> {
        pg_write!(one self, |c| events::set_room_published(&c, room_id, published).await?)
    }

    async fn published_rooms(&self) -> Result<Vec<OwnedRoomId>> {
        events::published_rooms(&self.client().await?).await
    }

    async fn room(&self, room_id: &RoomId) -> Result<Option<RoomInfo>> {
        let room = events::room(&self.client().await?, room_id).await?;
        if let Some(room) = &room {
            self.keep_room_version(room_id, &room.version);
        }
        Ok(room)
    }

    async fn room_version(&self, room_id: &RoomId) -> Result<Option<RoomVersionId>> {
        if let Some(version) = self.room_versions.lock().expect("room versions").get(room_id) {
            return Ok(Some(version.clone()));
        }
        Ok(self.room(room_id).await?.map(|r| r.version))
    }

    async fn add_room(&self, room_id: &RoomId, version: &RoomVersionId) -> Result<()> {
        pg_write!(self, |tx| events::add_room(&tx, room_id.as_str(), version.as_str())
            .await?)
    }

    async fn event(&self, event_id: &EventId) -> Result<Option<StoredEvent>> {
        Ok(self.events(&[event_id.to_owned()]).await?.pop())
    }

    async fn events(&self, ids: &[OwnedEventId]) -> Result<Vec<StoredEvent>> {
        self.events
            .get_or_load(ids, |missing| async move {
                let c = self.client().await?;
                events::events(&c, &missing).await
            })
            .await
    }

    async fn event_keys(&self, ids: &[OwnedEventId]) -> Result<Vec<crate::storage::EventKey>> {
        events::event_keys(&self.client().await?, ids).await
    }

    async fn forward_extremities(&self, room_id: &RoomId) -> Result<Vec<(OwnedEventId, i64)>> {
        events::forward_extremities(&self.client().await?, room_id).await
    }

    async fn children(&self, event_id: &EventId) -> Result<Vec<OwnedEventId>> {
        events::children(&self.client().await?, event_id).await
    }

    async fn backward_extremities(&self, room_id: &RoomId) -> Result<Vec<(OwnedEventId, i64)>> {
        events::backward_extremities(&self.client().await?, room_id).await
    }

    async fn persist_timeline_events(&self, new: Vec<NewTimelineEvent>) -> Result<Vec<Persisted>> {
        let writes = self.events.writes();
        let persisted = pg_write!(self, |tx| {
            if super::backfilled::batchable(&new) {
                super::backfilled::persist(&tx, &new).await?
            } else if let Some(fitting) = new.iter().map(super::live::fits).collect::<Option<Vec<_>>>() {
                // A run of live events changing no state (a transaction's
                // messages): each event's one statement, then their
                // notifications', in one transaction. The statements are
                // sent without waiting for each answer (the server runs
                // them in order, each seeing the ones before): two round
                // trips for the run.
                let mut persisted = futures_util::future::try_join_all(
                    new.iter()
                        .zip(fitting)
                        .map(|(event, (group, current))| super::live::persist(&tx, event, group, current)),
                )
                .await?;
                let queued = futures_util::future::try_join_all(new.iter().zip(&persisted).map(|(event, written)| {
                    super::push::insert_notifications(
                        &tx,
                        place_of(&event.pdu, written.stream_ordering),
                        &event.notifications,
                        None,
                    )
                }))
                .await?;
                for (written, queued) in persisted.iter_mut().zip(queued) {
                    written.pushes_queued = queued;
                }
                persisted
            } else {
                let mut persisted = Vec::with_capacity(new.len());
                for event in &new {
                    persisted.push(events::persist_timeline_event(&tx, event).await?);
                }
                persisted
            }
        })?;
        for (event, persisted) in new.iter().zip(&persisted) {
            self.events.written(event, persisted, writes);
        }
        Ok(persisted)
    }

    async fn persist_timeline_event(&self, event: NewTimelineEvent) -> Result<Persisted> {
        let writes = self.events.writes();
        let persisted = match super::live::fits(&event) {
            Some((group, current)) => {
                let mut persisted = pg_write!(one self, |c| super::live::persist(&c, &event, group, current).await?)?;
                // The notifications in a statement of their own, after the
                // event's (as before they were written with it).
                let at = place_of(&event.pdu, persisted.stream_ordering);
                persisted.pushes_queued = pg_write!(one self, |c| {
                    super::push::insert_notifications(&c, at, &event.notifications, None).await?
                })?;
                persisted
            }
            None => pg_write!(self, |tx| events::persist_timeline_event(&tx, &event).await?)?,
        };
        // (It may have been held as an outlier: the cache has it anew.)
        self.events.written(&event, &persisted, writes);
        Ok(persisted)
    }

    async fn persist_outliers(&self, outliers: Vec<(Arc<Pdu>, Option<String>)>) -> Result<()> {
        pg_write!(self, |tx| events::persist_outliers(&tx, &outliers).await?)?;
        for (pdu, _) in &outliers {
            self.events.forget(&pdu.event_id);
        }
        Ok(())
    }

    async fn txn_event(&self, txn: &TxnKey) -> Result<Option<OwnedEventId>> {
        events::txn_event(&self.client().await?, txn).await
    }

    async fn next_expiry(&self) -> Result<Option<(OwnedEventId, u64)>> {
        events::next_expiry(&self.client().await?).await
    }

    async fn expire_event(&self, event_id: &EventId, pruned_json: Option<&str>) -> Result<bool> {
        let expired = pg_write!(self, |tx| events::expire_event(&tx, event_id, pruned_json).await?)?;
        self.events.forget(event_id);
        Ok(expired)
    }

    async fn apply_redaction(&self, event_id: &EventId, redacted_json: &str, redacted_by: &EventId) -> Result<()> {
        pg_write!(self, |tx| events::apply_redaction(
            &tx,
            event_id,
            redacted_json,
            redacted_by
        )
        .await?)?;
        self.events.forget(event_id);
        Ok(())
    }

    async fn event_near_timestamp(&self, room_id: &RoomId, ts: u64, dir: Direction) -> Result<Option<StoredEvent>> {
        events::event_near_timestamp(&self.client().await?, room_id, ts, dir).await
    }

    async fn timeline_page(
        &self,
        room_id: &RoomId,
        from: TopoKey,
        dir: Direction,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
        events::timeline_page(&self.client().await?, room_id, from, dir, limit).await
    }

    async fn stream_page(
        &self,
        room_id: &RoomId,
        after: StreamOrdering,
        upto: StreamOrdering,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
        events::stream_page(&self.client().await?, room_id, after, upto, limit).await
    }

    async fn topo_key_at_stream(&self, room_id: &RoomId, stream: StreamOrdering) -> Result<Option<TopoKey>> {
        events::topo_key_at_stream(&self.client().await?, room_id, stream).await
    }

    async fn max_stream_ordering(&self) -> Result<StreamOrdering> {
        events::max_stream_ordering(&self.client().await?).await
    }

    async fn store_state_group(&self, room_id: &RoomId, state: StateWrite) -> Result<StateGroupId> {
        pg_write!(self, |tx| state::write_state(&tx, room_id, &state).await?)
    }

    async fn state_group(&self, group: StateGroupId) -> Result<Vec<(StateKey, OwnedEventId)>> {
        state::load_group(&self.client().await?, group).await
    }

    async fn state_group_chain(&self, group: StateGroupId) -> Result<Vec<StateGroupId>> {
        state::chain(&self.client().await?, group).await
    }

    async fn state_group_entries(&self, groups: &[StateGroupId]) -> Result<Vec<StoredGroup>> {
        state::group_entries(&self.client().await?, groups).await
    }

    async fn state_group_entry(&self, group: StateGroupId, key: &StateKey) -> Result<Option<OwnedEventId>> {
        state::group_entry(&self.client().await?, group, key).await
    }

    async fn current_state(
        &self,
        room_id: &RoomId,
        event_type: Option<&StateEventType>,
    ) -> Result<Vec<(StateKey, OwnedEventId)>> {
        state::current_state(&self.client().await?, room_id, event_type).await
    }

    async fn room_members(&self, room_id: &RoomId, membership: Option<&str>) -> Result<Vec<Membership>> {
        state::room_members(&self.client().await?, room_id, membership).await
    }

    async fn user_memberships(&self, user_id: &UserId) -> Result<Vec<Membership>> {
        state::user_memberships(&self.client().await?, user_id).await
    }

    async fn membership_changes(
        &self,
        user_id: &UserId,
        after: StreamOrdering,
        upto: StreamOrdering,
    ) -> Result<Vec<OwnedRoomId>> {
        state::membership_changes(&self.client().await?, user_id, after, upto).await
    }

    async fn auth_chain(&self, event_ids: &[OwnedEventId]) -> Result<Vec<OwnedEventId>> {
        history::auth_chain(&self.client().await?, event_ids).await
    }

    async fn backfill(&self, room_id: &RoomId, from: &[OwnedEventId], limit: usize) -> Result<Vec<StoredEvent>> {
        let mut c = self.client().await?;
        let snapshot = super::read_snapshot(&mut c).await?;
        history::backfill(&snapshot, room_id, from, limit).await
    }

    async fn missing_events(
        &self,
        room_id: &RoomId,
        earliest: &[OwnedEventId],
        latest: &[OwnedEventId],
        limit: usize,
        min_depth: u64,
    ) -> Result<Vec<StoredEvent>> {
        let mut c = self.client().await?;
        let snapshot = super::read_snapshot(&mut c).await?;
        history::missing_events(&snapshot, room_id, earliest, latest, limit, min_depth).await
    }

    async fn store_server_keys(
        &self,
        server: &ServerName,
        keys: &[ServerKey],
        document: Option<(&str, u64)>,
    ) -> Result<()> {
        pg_write!(self, |tx| keys::store_server_keys(&tx, server, keys, document).await?)
    }

    async fn server_keys(&self, server: &ServerName) -> Result<Vec<ServerKey>> {
        keys::server_keys(&self.client().await?, server).await
    }

    async fn server_key_documents(
        &self,
        server: &ServerName,
        key_ids: &[String],
    ) -> Result<Vec<(String, String, u64)>> {
        keys::server_key_documents(&self.client().await?, server, key_ids).await
    }

    async fn received_transaction(&self, origin: &ServerName, txn_id: &str) -> Result<Option<String>> {
        transactions::received(&self.client().await?, origin, txn_id).await
    }

    async fn store_received_transaction(&self, origin: &ServerName, txn_id: &str, response: &str) -> Result<()> {
        pg_write!(one self, |c| transactions::store_received(&c, origin, txn_id, response)
            .await?)
    }

    async fn queue_pdu(&self, destinations: &[OwnedServerName], event_id: &EventId) -> Result<()> {
        pg_write!(self, |tx| transactions::queue(&tx, destinations, event_id).await?)
    }

    async fn queued_pdus(&self, destination: &ServerName, limit: usize) -> Result<Vec<(i64, OwnedEventId)>> {
        transactions::queued(&self.client().await?, destination, limit).await
    }

    async fn dequeue_pdus(&self, destination: &ServerName, up_to: i64) -> Result<()> {
        pg_write!(one self, |c| transactions::dequeue(&c, destination, up_to).await?)
    }

    async fn queued_destinations(&self) -> Result<Vec<OwnedServerName>> {
        transactions::destinations(&self.client().await?).await
    }

    async fn store_remote_invite(&self, invite: &RemoteInvite) -> Result<()> {
        pg_write!(self, |tx| transactions::store_remote_invite(&tx, invite).await?)
    }

    async fn remote_invites(&self, user_id: &UserId) -> Result<Vec<RemoteInvite>> {
        transactions::remote_invites(&self.client().await?, user_id).await
    }

    async fn delete_remote_invite(&self, user_id: &UserId, room_id: &RoomId) -> Result<()> {
        pg_write!(self, |tx| {
            exec(
                &tx,
                "DELETE FROM remote_invites WHERE user_id = $1 AND room_id = $2",
                &[&user_id.as_str(), &room_id.as_str()],
            )
            .await?
        })?;
        Ok(())
    }

    async fn put_receipt(&self, r: &Receipt) -> Result<Option<i64>> {
        pg_write!(one self, |c| super::ephemeral::put_receipt(&c, r).await?)
    }

    async fn receipts(&self, room_id: &RoomId, after: Option<i64>) -> Result<Vec<Receipt>> {
        super::ephemeral::receipts(&self.client().await?, room_id, after).await
    }

    async fn set_typing(&self, room_id: &RoomId, user_id: &UserId, change: Typing) -> Result<Option<i64>> {
        pg_write!(self, |tx| super::ephemeral::set_typing(&tx, room_id, user_id, change)
            .await?)
    }

    async fn typing(&self, after: Option<i64>, up_to: i64) -> Result<Vec<RoomTyping>> {
        super::ephemeral::typing(&self.client().await?, after, up_to).await
    }

    async fn typing_run_out(&self, before_ms: u64) -> Result<Vec<(OwnedRoomId, OwnedUserId, u64)>> {
        super::ephemeral::run_out(&self.client().await?, before_ms).await
    }

    async fn max_ephemeral_position(&self) -> Result<i64> {
        super::ephemeral::head(&self.client().await?).await
    }

    async fn put_account_data(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        data_type: &str,
        content: &str,
    ) -> Result<i64> {
        pg_write!(self, |tx| account_data::put(&tx, user_id, room_id, data_type, content)
            .await?)
    }

    async fn account_data(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        data_type: &str,
    ) -> Result<Option<String>> {
        account_data::get(&self.client().await?, user_id, room_id, data_type).await
    }

    async fn account_data_changes(&self, user_id: &UserId, after: Option<i64>, upto: i64) -> Result<Vec<AccountData>> {
        account_data::changes(&self.client().await?, user_id, after, upto).await
    }

    async fn room_account_data(&self, user_id: &UserId, room_id: &RoomId, upto: i64) -> Result<Vec<AccountData>> {
        account_data::of_room(&self.client().await?, user_id, room_id, upto).await
    }

    async fn max_account_data_position(&self) -> Result<i64> {
        account_data::max_position(&self.client().await?).await
    }

    async fn change_presence(&self, user_id: &UserId, change: PresenceChange) -> Result<PresenceWrite> {
        pg_write!(self, |tx| presence::change(&tx, user_id, &change).await?)
    }

    async fn restamp_presence(&self, user_id: &UserId) -> Result<Option<PresenceRecord>> {
        pg_write!(self, |tx| presence::restamp(&tx, user_id).await?)
    }

    async fn presence_changes(&self, after: Option<i64>, up_to: i64) -> Result<Vec<PresenceRecord>> {
        presence::changes(&self.client().await?, after, up_to).await
    }

    async fn presence_of(&self, users: &[OwnedUserId]) -> Result<Vec<PresenceRecord>> {
        presence::of(&self.client().await?, users).await
    }

    async fn presence_quiet(&self, idle_before: i64, offline_before: i64) -> Result<Vec<OwnedUserId>> {
        presence::quiet(&self.client().await?, idle_before, offline_before).await
    }

    async fn max_presence_position(&self) -> Result<i64> {
        presence::head(&self.client().await?).await
    }
}
