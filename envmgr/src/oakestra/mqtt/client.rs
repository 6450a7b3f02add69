//! The MQTT session: polls rumqttc's event loop (which connects, and
//! reconnects on the next poll after an error), subscribes after every
//! ConnAck (clean session: the broker forgets subscriptions), and hands
//! every message on as an [`Event`], or counts it as dropped.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{Event as MqttEvent, EventLoop, Packet, QoS, SubscribeFilter};

use super::wire::{to_payload, worker_topic, Incoming, Presence, WORKERS_FILTER};
use super::{lock, Event, Inner, Worker};

/// Backoff between connection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The client task's body; runs until aborted.
pub(super) async fn run(inner: Arc<Inner>, mut ev: EventLoop) {
    let mut backoff = BACKOFF_MIN;
    let mut down_logged = false;
    loop {
        match ev.poll().await {
            Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                backoff = BACKOFF_MIN;
                down_logged = false;
                {
                    let mut s = inner.status();
                    s.connected = true;
                    s.last_error = None;
                }
                tracing::info!(broker = %inner.settings.broker(), client_id = %inner.settings.client_id, "oakestra: connected to the broker");
                let mut filters = vec![
                    SubscribeFilter::new(inner.topics.tablequery_result(), QoS::AtLeastOnce),
                    SubscribeFilter::new(inner.topics.subnetwork_result(), QoS::AtLeastOnce),
                    SubscribeFilter::new(WORKERS_FILTER.to_owned(), QoS::AtLeastOnce),
                ];
                filters.extend(
                    lock(&inner.subscriptions)
                        .iter()
                        .map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce)),
                );
                if let Err(e) = inner.client.try_subscribe_many(filters) {
                    tracing::warn!("oakestra: subscribe after connect: {e}");
                }
                // This worker's presence, retained (its last will clears it).
                let me = inner.settings.me;
                let presence = to_payload(&Presence {
                    host_ip: me.ip().to_string(),
                    host_port: me.port(),
                    public_key: inner.settings.public_key.clone(),
                });
                let topic = worker_topic(&inner.settings.client_id);
                if let Err(e) = inner
                    .client
                    .try_publish(topic, QoS::AtLeastOnce, true, presence)
                {
                    tracing::warn!("oakestra: publish this worker's presence: {e}");
                }
                let _ = inner.events.send(Event::Connected);
            }
            Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                dispatch(&inner, &p.topic, &p.payload);
            }
            Ok(_) => {}
            Err(e) => {
                {
                    let mut s = inner.status();
                    s.connected = false;
                    s.last_error = Some(e.to_string());
                }
                if !down_logged {
                    tracing::warn!(broker = %inner.settings.broker(), "oakestra: broker connection: {e}; retrying");
                    down_logged = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// One message from the broker.
pub(super) fn dispatch(inner: &Inner, topic: &str, payload: &[u8]) {
    match Incoming::parse(&inner.topics, topic, payload) {
        Ok(Incoming::Subnet(a)) => {
            inner.subnet.send_replace(Some(a));
        }
        Ok(Incoming::Table(a)) => {
            let solicited = inner.take_asked(&a.query_key)
                | a.app_name.as_deref().is_some_and(|j| inner.take_asked(j));
            let _ = inner.events.send(Event::Answer {
                answer: Arc::new(a),
                solicited,
            });
        }
        Ok(Incoming::Update { job }) => {
            let _ = inner.events.send(Event::Update(job));
        }
        Ok(Incoming::Worker { id, endpoint }) => {
            let changed = {
                let mut w = lock(&inner.workers);
                match endpoint {
                    _ if id == inner.settings.client_id => false,
                    Some((e, _)) if e == inner.settings.me => false,
                    Some((endpoint, public_key)) => {
                        let new = Worker {
                            endpoint,
                            public_key,
                        };
                        w.insert(id, new.clone()) != Some(new)
                    }
                    None => w.remove(&id).is_some(),
                }
            };
            if changed {
                let _ = inner.events.send(Event::Workers);
            }
        }
        Err(reason) => {
            let shown: String = String::from_utf8_lossy(payload).chars().take(120).collect();
            inner.dropped(reason, &format!("on {topic}: {shown:?}"));
        }
    }
}
