//! What the machine's network interfaces allow: the largest UDP payload a
//! QUIC packet may grow to, read from the interfaces themselves so that
//! loopback, Ethernet and jumbo-frame networks each get their own bound
//! without configuration, and a UDP socket that keeps segmentation offload
//! (GSO) within what the kernel accepts at any packet size.

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use std::ffi::CStr;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// IPv6 and UDP headers: a UDP payload of MTU minus this fits one packet on
/// either IP version.
const IP_UDP_HEADER_BYTES: u32 = 48;
/// Largest UDP payload quinn accepts as a bound.
pub const UDP_PAYLOAD_MAX_BYTES: u16 = 65_527;
/// Payload of one GSO send: the kernel refuses a UDP datagram (which a GSO
/// batch is, until it is split) over 64 KiB less its headers.
const GSO_BATCH_MAX_BYTES: usize = 65_000;

/// MTUs of the interfaces that are up, split into loopback and the rest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterfaceMtus {
    pub loopback: Option<u32>,
    pub network: Option<u32>,
}

impl InterfaceMtus {
    /// The interfaces of the calling thread's network namespace. Unreadable
    /// interfaces are skipped; none readable gives `None` for both.
    pub fn read() -> InterfaceMtus {
        let mut found = InterfaceMtus::default();
        let Some(socket) = Socket::datagram() else {
            return found;
        };
        for name in interface_names() {
            let Some(flags) = socket.flags(&name) else {
                continue;
            };
            if flags & libc::IFF_UP as u32 == 0 {
                continue;
            }
            let Some(mtu) = socket.mtu(&name) else {
                continue;
            };
            let slot = match flags & libc::IFF_LOOPBACK as u32 {
                0 => &mut found.network,
                _ => &mut found.loopback,
            };
            *slot = Some(slot.map_or(mtu, |seen| seen.max(mtu)));
        }
        found
    }

    /// The UDP payload bound for a path to `peer`: loopback's MTU for a
    /// loopback peer, the largest other interface's for any other peer, the
    /// largest of all when the peer is unknown (a server's one socket
    /// answers both kinds). MTU discovery climbs only as far as probes get
    /// through, so a bound above the real path costs a few lost probes.
    pub fn udp_payload_bound(&self, peer: Option<std::net::IpAddr>) -> Option<u16> {
        let mtu = match peer {
            Some(ip) if ip.is_loopback() => self.loopback,
            Some(_) => self.network,
            None => self.loopback.max(self.network),
        }?;
        let payload = mtu.saturating_sub(IP_UDP_HEADER_BYTES);
        (payload >= 1200).then(|| payload.min(UDP_PAYLOAD_MAX_BYTES as u32) as u16)
    }
}

fn interface_names() -> Vec<std::ffi::CString> {
    let mut names = Vec::new();
    // SAFETY: if_nameindex returns an array ending in a zeroed entry, or
    // null; it is read up to that entry and freed once.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return names;
        }
        let mut at = list;
        while (*at).if_index != 0 && !(*at).if_name.is_null() {
            names.push(CStr::from_ptr((*at).if_name).to_owned());
            at = at.add(1);
        }
        libc::if_freenameindex(list);
    }
    names
}

/// A datagram socket for interface ioctls, closed on drop.
struct Socket(libc::c_int);

impl Socket {
    fn datagram() -> Option<Socket> {
        // SAFETY: a plain socket(2) call; the descriptor is owned here.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        (fd >= 0).then_some(Socket(fd))
    }

    fn request(&self, name: &CStr, op: libc::Ioctl) -> Option<libc::ifreq> {
        let bytes = name.to_bytes();
        // SAFETY: ifreq is plain data; zeroed is a valid value.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        if bytes.len() >= request.ifr_name.len() {
            return None;
        }
        for (slot, byte) in request.ifr_name.iter_mut().zip(bytes) {
            *slot = *byte as libc::c_char;
        }
        // SAFETY: the request names a NUL-terminated interface and has room
        // for the answer of SIOCGIFMTU and SIOCGIFFLAGS.
        let done = unsafe { libc::ioctl(self.0, op, &mut request) };
        (done == 0).then_some(request)
    }

    fn mtu(&self, name: &CStr) -> Option<u32> {
        let answer = self.request(name, libc::SIOCGIFMTU)?;
        // SAFETY: SIOCGIFMTU fills the ifru_mtu member.
        let mtu = unsafe { answer.ifr_ifru.ifru_mtu };
        u32::try_from(mtu).ok()
    }

    fn flags(&self, name: &CStr) -> Option<u32> {
        let answer = self.request(name, libc::SIOCGIFFLAGS)?;
        // SAFETY: SIOCGIFFLAGS fills the ifru_flags member.
        let flags = unsafe { answer.ifr_ifru.ifru_flags };
        Some(flags as u16 as u32)
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: the descriptor is owned by this value.
        unsafe {
            libc::close(self.0);
        }
    }
}

/// Receive and send buffers a UDP socket holds, as asked for them (the
/// kernel reports twice what it grants, for its own bookkeeping; these are
/// halved back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketBuffers {
    pub receive: u32,
    pub send: u32,
}

/// Asks for `bytes` of receive and send buffer on `socket`. The kernel's
/// default (208 KiB) holds three 64 KiB datagrams: a client reading from
/// several chunkservers at once overflowed it, the kernel dropped whole
/// GSO batches, and retransmissions and congestion backoff cost a fifth of
/// the bytes and half the throughput. An unprivileged socket gets at most
/// `net.core.rmem_max` / `wmem_max`; with `CAP_NET_ADMIN` (root) the limit
/// is passed over (`SO_RCVBUFFORCE`), as it is a choice made for this
/// socket alone.
pub fn size_buffers(socket: &std::net::UdpSocket, bytes: u32) -> SocketBuffers {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    let wanted = bytes.min(i32::MAX as u32 / 2) as libc::c_int;
    let size = |option: libc::c_int, force: libc::c_int| {
        set_int(fd, option, wanted);
        if get_int(fd, option) / 2 < wanted {
            set_int(fd, force, wanted);
        }
        (get_int(fd, option) / 2).max(0) as u32
    };
    SocketBuffers {
        receive: size(libc::SO_RCVBUF, libc::SO_RCVBUFFORCE),
        send: size(libc::SO_SNDBUF, libc::SO_SNDBUFFORCE),
    }
}

fn set_int(fd: libc::c_int, option: libc::c_int, value: libc::c_int) {
    // SAFETY: setsockopt reads one c_int from the pointer given with its
    // length; a refusal (no privilege for a FORCE option) leaves the
    // socket as it was, which the caller reads back.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn get_int(fd: libc::c_int, option: libc::c_int) -> libc::c_int {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`.
    let done = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if done == 0 { value } else { 0 }
}

/// A UDP socket that sends a GSO batch larger than the kernel takes in
/// several sends of whole segments. quinn puts up to ten packets in one
/// batch whatever their size, so with packets over 6.5 KB every batch was
/// refused, MTU probes were lost and connections fell back to 1,200-byte
/// packets; with this, offload stays on at any packet size.
#[derive(Debug)]
pub struct GsoLimited {
    inner: Arc<dyn AsyncUdpSocket>,
}

impl GsoLimited {
    pub fn new(inner: Arc<dyn AsyncUdpSocket>) -> GsoLimited {
        GsoLimited { inner }
    }
}

impl AsyncUdpSocket for GsoLimited {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let Some(segment) = transmit.segment_size else {
            return self.inner.try_send(transmit);
        };
        if transmit.contents.len() <= GSO_BATCH_MAX_BYTES || segment == 0 {
            return self.inner.try_send(transmit);
        }
        // Whole segments per send. A send that would block after earlier
        // parts went out reports WouldBlock and quinn sends the whole batch
        // again: the peer drops the repeated packets as duplicates.
        let per_send = (GSO_BATCH_MAX_BYTES / segment).max(1) * segment;
        for part in transmit.contents.chunks(per_send) {
            self.inner.try_send(&Transmit {
                contents: part,
                segment_size: (part.len() > segment).then_some(segment),
                ..*transmit
            })?;
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_buffers_grow_to_what_is_asked_or_to_the_limit() {
        use std::os::fd::AsRawFd;
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let default = get_int(socket.as_raw_fd(), libc::SO_RCVBUF) as u32 / 2;
        let asked = 4 * 1024 * 1024;
        let after = size_buffers(&socket, asked);
        // Root (as the tests run in CI) passes the limit; anyone else gets
        // at least the default and at most what was asked.
        assert!(after.receive <= asked && after.send <= asked, "{after:?}");
        assert!(after.receive >= default.min(asked), "{default} {after:?}");
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(
                after,
                SocketBuffers {
                    receive: asked,
                    send: asked
                }
            );
        }
    }

    #[test]
    fn this_machine_has_a_loopback_interface_with_a_large_mtu() {
        let mtus = InterfaceMtus::read();
        assert!(mtus.loopback.is_some_and(|mtu| mtu >= 1500), "{mtus:?}");
        let bound = mtus.udp_payload_bound(Some("127.0.0.1".parse().unwrap()));
        assert!(bound.is_some_and(|b| b >= 1452), "{bound:?}");
    }

    #[test]
    fn bounds_follow_the_peer_and_the_headers() {
        let mtus = InterfaceMtus {
            loopback: Some(65_536),
            network: Some(1500),
        };
        let lo = Some("::1".parse().unwrap());
        let net = Some("10.1.2.3".parse().unwrap());
        assert_eq!(mtus.udp_payload_bound(lo), Some(65_488));
        assert_eq!(mtus.udp_payload_bound(net), Some(1452));
        assert_eq!(mtus.udp_payload_bound(None), Some(65_488));
        let jumbo = InterfaceMtus {
            loopback: None,
            network: Some(9000),
        };
        assert_eq!(jumbo.udp_payload_bound(net), Some(8952));
        assert_eq!(jumbo.udp_payload_bound(lo), None);
        let tiny = InterfaceMtus {
            loopback: None,
            network: Some(1000),
        };
        assert_eq!(tiny.udp_payload_bound(net), None);
    }
}
