//! One running session: opens it on the backend, forwards client input to it and its output
//! to the client.
//!
//! Flow control. Output is written through russh's channel writer, which waits for the
//! client's SSH window, and the backend's output channel is bounded, so a fast producer
//! (`yes`) is paused rather than buffered. Input: russh re-opens the client's window as soon as
//! data arrives, so the only brake is the connection's read loop. Blocking that loop on a full
//! backend queue could deadlock (the loop also carries the output and the client's window
//! adjustments, and a process blocked on output stops reading input), so input goes through a
//! per-channel queue with a byte budget: the loop waits only when a channel has
//! [`INPUT_BUDGET`] bytes queued that the session has not taken.

use std::sync::Arc;

use russh::server::{Handle, Msg};
use russh::{ChannelId, ChannelWriteHalf, Sig};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::task::AbortHandle;

use crate::backend::{Backend, BackendError, Input, Output, SessionIo, SessionKind, Target};

/// Bytes of client input one channel may have queued before the connection waits for it.
pub(crate) const INPUT_BUDGET: usize = 1 << 20;
/// What a non-data input (EOF, resize, signal) counts against the budget.
const CONTROL_COST: usize = 64;
/// Exit status reported when the backend could not open the session.
const OPEN_FAILED_STATUS: u32 = 255;

type Queued = (Input, OwnedSemaphorePermit);

/// The handler's end of a channel's input queue.
pub(crate) struct InputQueue {
    tx: mpsc::UnboundedSender<Queued>,
    budget: Arc<Semaphore>,
}

impl InputQueue {
    pub(crate) fn new() -> (Self, mpsc::UnboundedReceiver<Queued>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let budget = Arc::new(Semaphore::new(INPUT_BUDGET));
        (Self { tx, budget }, rx)
    }

    /// Queues `input`, waiting only while the channel's budget is used up.
    pub(crate) async fn push(&self, input: Input) {
        let cost = match &input {
            Input::Data(d) => d.len().clamp(1, INPUT_BUDGET),
            _ => CONTROL_COST,
        };
        // `cost` is at most INPUT_BUDGET, which fits u32.
        let cost = u32::try_from(cost).unwrap_or(u32::MAX);
        let permit = match self.budget.clone().try_acquire_many_owned(cost) {
            Ok(p) => p,
            Err(TryAcquireError::NoPermits) => {
                tracing::debug!("input budget used up; pausing the connection");
                match self.budget.clone().acquire_many_owned(cost).await {
                    Ok(p) => p,
                    Err(_) => return,
                }
            }
            Err(TryAcquireError::Closed) => return,
        };
        // The session may be gone already; its input is then dropped.
        let _ = self.tx.send((input, permit));
    }
}

/// Starts the session task of channel `id`; aborting it drops both ends of the session.
pub(crate) fn spawn(
    backend: Arc<dyn Backend>,
    target: Target,
    kind: SessionKind,
    id: ChannelId,
    writer: ChannelWriteHalf<Msg>,
    handle: Handle,
    input_rx: mpsc::UnboundedReceiver<Queued>,
) -> AbortHandle {
    let task = tokio::spawn(async move {
        let io = match backend.open(&target, kind).await {
            Ok(io) => io,
            Err(e) => {
                report_open_error(&target, &writer, e).await;
                return;
            }
        };
        run(io, id, writer, handle, input_rx).await;
        tracing::debug!(sandbox = %target.sandbox, channel = %id, "session ended");
    });
    task.abort_handle()
}

async fn report_open_error(target: &Target, writer: &ChannelWriteHalf<Msg>, e: BackendError) {
    let shown = match &e {
        BackendError::Unavailable(msg) => msg.clone(),
        BackendError::Internal(source) => {
            tracing::warn!(sandbox = %target.sandbox, error = %source, "backend could not open session");
            "internal error".to_owned()
        }
    };
    tracing::info!(sandbox = %target.sandbox, reason = %shown, "session refused");
    let mut stderr = writer.make_writer_ext(Some(1));
    let _ = stderr
        .write_all(format!("sandboxd: cannot open session: {shown}\r\n").as_bytes())
        .await;
    let _ = writer.exit_status(OPEN_FAILED_STATUS).await;
    let _ = writer.eof().await;
    let _ = writer.close().await;
}

async fn run(
    io: SessionIo,
    id: ChannelId,
    writer: ChannelWriteHalf<Msg>,
    handle: Handle,
    mut input_rx: mpsc::UnboundedReceiver<Queued>,
) {
    let SessionIo { input, mut output } = io;

    // Ends when the client closes the channel (the handler drops the queue) or the session
    // stops reading; either way `input` is dropped here.
    let forward = async move {
        while let Some((item, _permit)) = input_rx.recv().await {
            if input.send(item).await.is_err() {
                break;
            }
            // `_permit` returns the item's bytes to the budget now that the session has it.
        }
    };

    let pump = async {
        let mut stdout = writer.make_writer();
        let mut stderr = writer.make_writer_ext(Some(1));
        while let Some(out) = output.recv().await {
            let written = match out {
                Output::Stdout(b) => stdout.write_all(&b).await,
                Output::Stderr(b) => stderr.write_all(&b).await,
                Output::Exit { code, signal } => {
                    let sent = match (signal, code) {
                        (Some(sig), _) => handle
                            .exit_signal_request(
                                id,
                                sig_from_name(&sig),
                                false,
                                String::new(),
                                String::new(),
                            )
                            .await
                            .is_ok(),
                        (None, Some(code)) => writer.exit_status(code as u32).await.is_ok(),
                        (None, None) => true,
                    };
                    if sent {
                        let _ = writer.eof().await;
                        let _ = writer.close().await;
                    }
                    return;
                }
            };
            if written.is_err() {
                // The connection is gone.
                return;
            }
        }
        // The backend ended without an exit status.
        let _ = writer.eof().await;
        let _ = writer.close().await;
    };

    tokio::select! {
        () = pump => {}
        () = async { forward.await; std::future::pending::<()>().await } => {}
    }
}

fn sig_from_name(name: &str) -> Sig {
    match name.strip_prefix("SIG").unwrap_or(name) {
        "ABRT" => Sig::ABRT,
        "ALRM" => Sig::ALRM,
        "FPE" => Sig::FPE,
        "HUP" => Sig::HUP,
        "ILL" => Sig::ILL,
        "INT" => Sig::INT,
        "KILL" => Sig::KILL,
        "PIPE" => Sig::PIPE,
        "QUIT" => Sig::QUIT,
        "SEGV" => Sig::SEGV,
        "TERM" => Sig::TERM,
        "USR1" => Sig::USR1,
        other => Sig::Custom(other.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::sig_name;

    #[test]
    fn signal_names_map_both_ways() {
        for n in ["INT", "TERM", "KILL", "HUP", "USR2"] {
            assert_eq!(sig_name(&sig_from_name(n)), n);
        }
        assert_eq!(sig_name(&sig_from_name("SIGTERM")), "TERM");
    }

    #[tokio::test]
    async fn input_queue_waits_when_budget_is_spent() {
        let (q, mut rx) = InputQueue::new();
        q.push(Input::Data(vec![0; INPUT_BUDGET])).await;
        let blocked = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            q.push(Input::Data(vec![1])),
        )
        .await;
        assert!(blocked.is_err(), "second push must wait for the budget");
        let (first, permit) = rx.recv().await.unwrap();
        assert_eq!(first, Input::Data(vec![0; INPUT_BUDGET]));
        drop(permit);
        q.push(Input::Data(vec![1])).await;
        assert_eq!(rx.recv().await.unwrap().0, Input::Data(vec![1]));
    }
}
