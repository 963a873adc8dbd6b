//! systemd's readiness and watchdog protocol (`sd_notify`), so units can be
//! `Type=notify` with `WatchdogSec=`: a daemon says READY once it accepts
//! requests (so units ordered after it start against a listening server),
//! pings the watchdog from its async runtime (a wedged runtime stops the
//! pings and systemd restarts it), and says STOPPING when it begins to shut
//! down. Outside systemd (`NOTIFY_SOCKET` unset) every call does nothing.
//! The protocol is one datagram per message on a Unix socket, which a few
//! lines of std do without a crate.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

fn send(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|socket| {
        use std::os::unix::ffi::OsStrExt;
        match path.as_bytes().strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(message.as_bytes(), &addr)
            }
            None => socket.send_to(message.as_bytes(), &path),
        }
    });
    if let Err(err) = sent {
        tracing::warn!(socket = ?path, error = %err, "could not notify systemd");
    }
}

/// The watchdog interval systemd asked for, if it asked this process.
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Tells systemd the daemon is serving, with a one-line status, and starts
/// the watchdog pings at half the interval systemd set. Call it inside the
/// runtime, after the listeners are bound.
pub fn ready(status: &str) {
    send(&format!("READY=1\nSTATUS={status}"));
    if let Some(interval) = watchdog_interval() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval / 2);
            loop {
                tick.tick().await;
                send("WATCHDOG=1");
            }
        });
    }
}

/// Tells systemd the daemon is shutting down (so a slow drain is not taken
/// for a hang).
pub fn stopping() {
    send("STOPPING=1");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_the_socket_named_in_notify_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).expect("bind");
        // SAFETY: this test is the only one in the crate touching these
        // variables, and it sets them before any thread reads them.
        unsafe {
            std::env::set_var("NOTIFY_SOCKET", &path);
            std::env::remove_var("WATCHDOG_USEC");
        }
        send("READY=1\nSTATUS=test");
        stopping();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=test");
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"STOPPING=1");
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
    }
}
