//! The target's own TCP sockets: which ports it listens on and which connections it holds,
//! from its descriptors (`/proc/PID/fd`, `socket:[INODE]`) matched against its network
//! namespace's tables (`/proc/PID/net/tcp`, `tcp6`). The parser is pure.

use std::{
    collections::HashSet,
    io::Read,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

/// The kernel's `TCP_LISTEN` and `TCP_ESTABLISHED` (include/net/tcp_states.h).
const LISTEN: u8 = 0x0A;
const ESTABLISHED: u8 = 0x01;
/// A socket table read at most (about 100,000 sockets).
const MAX_TABLE_BYTES: u64 = 16 << 20;
/// Descriptors looked at, at most.
const MAX_FDS: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSocket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: u8,
    pub inode: u64,
}

impl TcpSocket {
    pub fn is_listening(&self) -> bool {
        self.state == LISTEN
    }

    pub fn is_established(&self) -> bool {
        self.state == ESTABLISHED
    }
}

/// Parses `/proc/net/tcp` or `tcp6`: a header line, then `sl local rem st ... uid timeout
/// inode ...` with addresses in hex as the kernel stores them (each 32-bit word in host
/// order). Lines that do not read are skipped.
pub fn parse_table(text: &str) -> Vec<TcpSocket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            Some(TcpSocket {
                local: parse_addr(fields.get(1)?)?,
                remote: parse_addr(fields.get(2)?)?,
                state: u8::from_str_radix(fields.get(3)?, 16).ok()?,
                inode: fields.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

fn parse_addr(field: &str) -> Option<SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = ip.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The socket inodes the process holds descriptors for.
pub fn socket_inodes(pid: u32) -> std::io::Result<HashSet<u64>> {
    let mut inodes = HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))?.take(MAX_FDS) {
        let Ok(entry) = entry else { continue };
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if let Some(inode) = link
            .to_str()
            .and_then(|l| l.strip_prefix("socket:["))
            .and_then(|l| l.strip_suffix(']'))
            .and_then(|l| l.parse().ok())
        {
            inodes.insert(inode);
        }
    }
    Ok(inodes)
}

/// The TCP sockets (v4 and v6) of the process's network namespace that the process holds.
pub fn sockets_of(pid: u32) -> std::io::Result<Vec<TcpSocket>> {
    let held = socket_inodes(pid)?;
    let mut sockets = Vec::new();
    for table in ["tcp", "tcp6"] {
        let mut text = String::new();
        match std::fs::File::open(format!("/proc/{pid}/net/{table}")) {
            Ok(file) => {
                file.take(MAX_TABLE_BYTES).read_to_string(&mut text)?;
            }
            // No IPv6 in this kernel.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        }
        sockets.extend(
            parse_table(&text)
                .into_iter()
                .filter(|s| held.contains(&s.inode)),
        );
    }
    Ok(sockets)
}

/// Where to connect to reach a socket listening on `local`: the loopback address of its
/// family for a wildcard, else the address itself.
pub fn connect_address(local: SocketAddr) -> SocketAddr {
    let ip = match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, local.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kernel_tables() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:240D 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 837723 1 000000006861f075 100 0 0 10 0\n\
   1: 0100007F:240D 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 837800 1 000000006861f075 20 4 30 10 -1\n\
   2: garbage\n";
        let sockets = parse_table(v4);
        assert_eq!(sockets.len(), 2);
        assert_eq!(sockets[0].local, "127.0.0.1:9229".parse().unwrap());
        assert!(sockets[0].is_listening());
        assert_eq!(sockets[0].inode, 837723);
        assert_eq!(sockets[1].remote, "127.0.0.1:54000".parse().unwrap());
        assert!(sockets[1].is_established());

        let v6 = "header\n   0: 00000000000000000000000001000000:240D 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1 0 100 0 0 10 0\n";
        let sockets = parse_table(v6);
        assert_eq!(sockets[0].local, "[::1]:9229".parse().unwrap());
    }

    #[test]
    fn a_wildcard_is_reached_on_loopback() {
        assert_eq!(
            connect_address("0.0.0.0:9229".parse().unwrap()),
            "127.0.0.1:9229".parse().unwrap()
        );
        assert_eq!(
            connect_address("[::]:9229".parse().unwrap()),
            "[::1]:9229".parse().unwrap()
        );
        assert_eq!(
            connect_address("10.0.0.2:9229".parse().unwrap()),
            "10.0.0.2:9229".parse().unwrap()
        );
    }
}
