//! The milter protocol (version 6, as libmilter 8.14+ speaks it), sans-IO:
//! encoding the MTA's commands, decoding the filter's replies, and the
//! option negotiation.
//!
//! Every packet is a 4-byte big-endian length (counting the command byte),
//! one command byte, then the data. [`decode_reply`] tells "need more bytes"
//! (`Ok(None)`) from "bad input" (`Err`), and refuses a packet longer than
//! [`MAX_PACKET`] before buffering it, so a broken or hostile filter cannot
//! make us hold more than that per packet.
//!
//! Decisions:
//! - The MTA offers every action bit ([`ALL_ACTIONS`]) and every protocol
//!   bit ([`ALL_PROTOCOL`]) in `SMFIC_OPTNEG`: a filter built with
//!   libmilter asks for the bits it needs, and one that asks for a bit not
//!   offered (clamav-milter asks for several `SMFIP_NR_*`) closes the
//!   connection. Offering the data-size bits (`SMFIP_MDS_*`) lets a filter
//!   send body chunks of up to 1 MiB, hence [`MAX_PACKET`].
//! - A filter's answer that asks for bits outside the offer, or a version
//!   below 2, is bad input: such a filter cannot be spoken to safely.
//! - Strings from the filter are NUL-terminated; a missing NUL is bad input,
//!   never a read past the packet.

use std::fmt;

/// The protocol version the MTA speaks.
pub const VERSION: u32 = 6;

/// The largest packet accepted from a filter (length field value): a body
/// replacement chunk of 1 MiB (`SMFIP_MDS_1M`) plus its command byte, with
/// room to spare.
pub const MAX_PACKET: usize = 1024 * 1024 + 1024;

/// The largest body chunk the MTA sends (libmilter's `MILTER_CHUNK_SIZE`).
pub const BODY_CHUNK: usize = 65535;

/// Action bits (`SMFIF_*`): what the filter may do at end of message.
pub mod smfif {
    /// Add header fields.
    pub const ADDHDRS: u32 = 0x01;
    /// Replace the body.
    pub const CHGBODY: u32 = 0x02;
    /// Add recipients.
    pub const ADDRCPT: u32 = 0x04;
    /// Delete recipients.
    pub const DELRCPT: u32 = 0x08;
    /// Change or delete header fields.
    pub const CHGHDRS: u32 = 0x10;
    /// Quarantine the message.
    pub const QUARANTINE: u32 = 0x20;
    /// Change the sender.
    pub const CHGFROM: u32 = 0x40;
    /// Add recipients with ESMTP arguments.
    pub const ADDRCPT_PAR: u32 = 0x80;
    /// Ask for a list of macros per stage.
    pub const SETSYMLIST: u32 = 0x100;
}

/// Every action bit, offered in the negotiation.
pub const ALL_ACTIONS: u32 = 0x1FF;

/// Protocol bits (`SMFIP_*`): stages the filter does not want, replies it
/// will not send, and extensions it understands.
pub mod smfip {
    /// No connect information.
    pub const NOCONNECT: u32 = 0x1;
    /// No HELO.
    pub const NOHELO: u32 = 0x2;
    /// No MAIL FROM.
    pub const NOMAIL: u32 = 0x4;
    /// No RCPT TO.
    pub const NORCPT: u32 = 0x8;
    /// No body chunks.
    pub const NOBODY: u32 = 0x10;
    /// No header fields.
    pub const NOHDRS: u32 = 0x20;
    /// No end of header.
    pub const NOEOH: u32 = 0x40;
    /// No reply to header fields.
    pub const NR_HDR: u32 = 0x80;
    /// No unknown commands.
    pub const NOUNKNOWN: u32 = 0x100;
    /// No DATA.
    pub const NODATA: u32 = 0x200;
    /// The MTA understands `SMFIR_SKIP`.
    pub const SKIP: u32 = 0x400;
    /// Send rejected recipients too.
    pub const RCPT_REJ: u32 = 0x800;
    /// No reply to connect.
    pub const NR_CONN: u32 = 0x1000;
    /// No reply to HELO.
    pub const NR_HELO: u32 = 0x2000;
    /// No reply to MAIL FROM.
    pub const NR_MAIL: u32 = 0x4000;
    /// No reply to RCPT TO.
    pub const NR_RCPT: u32 = 0x8000;
    /// No reply to DATA.
    pub const NR_DATA: u32 = 0x10000;
    /// No reply to unknown commands.
    pub const NR_UNKN: u32 = 0x20000;
    /// No reply to end of header.
    pub const NR_EOH: u32 = 0x40000;
    /// No reply to body chunks.
    pub const NR_BODY: u32 = 0x80000;
    /// Header values keep their leading white space.
    pub const HDR_LEADSPC: u32 = 0x100000;
    /// Data chunks of up to 256 KiB.
    pub const MDS_256K: u32 = 0x1000_0000;
    /// Data chunks of up to 1 MiB.
    pub const MDS_1M: u32 = 0x2000_0000;
}

/// Every protocol bit, offered in the negotiation.
pub const ALL_PROTOCOL: u32 = 0x001F_FFFF | smfip::MDS_256K | smfip::MDS_1M;

/// A stage of the conversation, for macros (`SMFIC_MACRO` carries its
/// command byte) and for the filter's macro lists (`SMFIM_*` numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Connect.
    Connect,
    /// HELO.
    Helo,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// DATA.
    Data,
    /// End of header.
    Eoh,
    /// End of message.
    Eom,
}

impl Stage {
    /// Every stage, in `SMFIM_*` order.
    pub const ALL: [Stage; 7] = [
        Stage::Connect,
        Stage::Helo,
        Stage::Mail,
        Stage::Rcpt,
        Stage::Data,
        Stage::Eom,
        Stage::Eoh,
    ];

    /// The command byte of the stage (the one a macro packet names).
    pub fn command(self) -> u8 {
        match self {
            Stage::Connect => b'C',
            Stage::Helo => b'H',
            Stage::Mail => b'M',
            Stage::Rcpt => b'R',
            Stage::Data => b'T',
            Stage::Eoh => b'N',
            Stage::Eom => b'E',
        }
    }

    /// The `SMFIM_*` number (its index in [`Stage::ALL`]).
    fn index(self) -> usize {
        Stage::ALL.iter().position(|s| *s == self).unwrap_or(0)
    }
}

/// A command from the MTA to the filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// `SMFIC_OPTNEG` with the full offer.
    Negotiate,
    /// `SMFIC_MACRO` for a stage: name/value pairs.
    Macros(Stage, &'a [(String, String)]),
    /// `SMFIC_CONNECT`: host name, the address (`None`: unknown) and port.
    Connect {
        /// The client's host name (or its address in brackets).
        host: &'a str,
        /// The client's address.
        ip: Option<std::net::IpAddr>,
        /// The client's port.
        port: u16,
    },
    /// `SMFIC_HELO`.
    Helo(&'a str),
    /// `SMFIC_MAIL`: `<sender>`.
    Mail(&'a str),
    /// `SMFIC_RCPT`: `<recipient>`.
    Rcpt(&'a str),
    /// `SMFIC_DATA`.
    Data,
    /// `SMFIC_HEADER`: name, value.
    Header(&'a [u8], &'a [u8]),
    /// `SMFIC_EOH`.
    Eoh,
    /// `SMFIC_BODY`: at most [`BODY_CHUNK`] bytes.
    Body(&'a [u8]),
    /// `SMFIC_BODYEOB`.
    Eom,
    /// `SMFIC_ABORT`.
    Abort,
    /// `SMFIC_QUIT`.
    Quit,
}

/// Appends `command` as one packet to `out`.
pub fn encode(command: &Command<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    match command {
        Command::Negotiate => {
            out.push(b'O');
            out.extend_from_slice(&VERSION.to_be_bytes());
            out.extend_from_slice(&ALL_ACTIONS.to_be_bytes());
            out.extend_from_slice(&ALL_PROTOCOL.to_be_bytes());
        }
        Command::Macros(stage, pairs) => {
            out.push(b'D');
            out.push(stage.command());
            for (name, value) in pairs.iter() {
                push_str(out, name.as_bytes());
                push_str(out, value.as_bytes());
            }
        }
        Command::Connect { host, ip, port } => {
            out.push(b'C');
            push_str(out, host.as_bytes());
            match ip {
                Some(ip) => {
                    out.push(if ip.is_ipv4() { b'4' } else { b'6' });
                    out.extend_from_slice(&port.to_be_bytes());
                    push_str(out, ip.to_string().as_bytes());
                }
                None => out.push(b'U'),
            }
        }
        Command::Helo(helo) => {
            out.push(b'H');
            push_str(out, helo.as_bytes());
        }
        Command::Mail(sender) => {
            out.push(b'M');
            push_str(out, format!("<{sender}>").as_bytes());
        }
        Command::Rcpt(recipient) => {
            out.push(b'R');
            push_str(out, format!("<{recipient}>").as_bytes());
        }
        Command::Data => out.push(b'T'),
        Command::Header(name, value) => {
            out.push(b'L');
            push_str(out, name);
            push_str(out, value);
        }
        Command::Eoh => out.push(b'N'),
        Command::Body(chunk) => {
            debug_assert!(chunk.len() <= BODY_CHUNK);
            out.push(b'B');
            out.extend_from_slice(chunk);
        }
        Command::Eom => out.push(b'E'),
        Command::Abort => out.push(b'A'),
        Command::Quit => out.push(b'Q'),
    }
    let len = u32::try_from(out.len() - start - 4).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// A string as the protocol carries it: NULs inside are dropped (they would
/// end it early), one NUL ends it.
fn push_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend(s.iter().copied().filter(|&b| b != 0));
    out.push(0);
}

/// A reply from the filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `SMFIC_OPTNEG` answered.
    Negotiated(Negotiated),
    /// `SMFIR_CONTINUE`.
    Continue,
    /// `SMFIR_ACCEPT`: accept the message, no more filtering.
    Accept,
    /// `SMFIR_REJECT`.
    Reject,
    /// `SMFIR_TEMPFAIL`.
    Tempfail,
    /// `SMFIR_DISCARD`: accept and drop the message.
    Discard,
    /// `SMFIR_REPLYCODE`: an SMTP reply (`554 5.7.1 text`), maybe
    /// multi-line.
    ReplyCode(String),
    /// `SMFIR_SKIP`: send no more body chunks.
    Skip,
    /// `SMFIR_PROGRESS`: still working, wait on.
    Progress,
    /// `SMFIR_CONN_FAIL` or `SMFIR_SHUTDOWN`: the filter gives up.
    Shutdown,
    /// A modification at end of message.
    Modify(Modification),
}

/// What a filter may change at end of message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Modification {
    /// `SMFIR_ADDHEADER`: append a field.
    AddHeader {
        /// The field name.
        name: String,
        /// The value, as the filter sent it.
        value: Vec<u8>,
    },
    /// `SMFIR_INSHEADER`: insert a field at `index` (0 is the top).
    InsertHeader {
        /// The position among all fields.
        index: u32,
        /// The field name.
        name: String,
        /// The value.
        value: Vec<u8>,
    },
    /// `SMFIR_CHGHEADER`: change the `index`th (from 1) field called
    /// `name`; an empty value deletes it.
    ChangeHeader {
        /// The position among the fields of that name, from 1.
        index: u32,
        /// The field name.
        name: String,
        /// The new value; empty deletes.
        value: Vec<u8>,
    },
    /// `SMFIR_CHGFROM`: a new sender (and ESMTP arguments, ignored).
    ChangeSender(String),
    /// `SMFIR_ADDRCPT` / `SMFIR_ADDRCPT_PAR`.
    AddRecipient(String),
    /// `SMFIR_DELRCPT`.
    DeleteRecipient(String),
    /// `SMFIR_REPLBODY`: one chunk of the new body.
    ReplaceBody(Vec<u8>),
    /// `SMFIR_QUARANTINE` with its reason.
    Quarantine(String),
}

/// The filter's answer to the negotiation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The filter's protocol version.
    pub version: u32,
    /// The actions it may take.
    pub actions: u32,
    /// The protocol bits it asked for.
    pub protocol: u32,
    /// The macros it wants per stage (`SMFIR_SETSYMLIST`), in
    /// [`Stage::ALL`] order; `None` where it said nothing.
    pub macros: [Option<Vec<String>>; 7],
}

impl Negotiated {
    /// Whether protocol bit `bit` was asked for.
    pub fn has(&self, bit: u32) -> bool {
        self.protocol & bit != 0
    }

    /// The macro names wanted at `stage`, if the filter gave a list.
    pub fn macros_for(&self, stage: Stage) -> Option<&[String]> {
        self.macros[stage.index()].as_deref()
    }
}

/// Input that is not a milter reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadReply(pub String);

impl fmt::Display for BadReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadReply {}

fn bad(why: impl Into<String>) -> BadReply {
    BadReply(why.into())
}

/// Decodes one reply from the front of `buf`: the reply and how many bytes
/// it took, or `Ok(None)` when more bytes are needed.
///
/// # Errors
///
/// [`BadReply`] for a packet of length zero or longer than [`MAX_PACKET`],
/// an unknown command byte, or data that does not fit the command (a
/// missing NUL, a short negotiation, bits that were not offered).
pub fn decode_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, BadReply> {
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len == 0 {
        return Err(bad("packet of length 0"));
    }
    if len > MAX_PACKET {
        return Err(bad(format!(
            "packet of {len} bytes, more than {MAX_PACKET}"
        )));
    }
    let Some(packet) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    let (command, data) = (packet[0], &packet[1..]);
    let reply = match command {
        b'O' => Reply::Negotiated(negotiated(data)?),
        b'c' => Reply::Continue,
        b'a' => Reply::Accept,
        b'r' => Reply::Reject,
        b't' => Reply::Tempfail,
        b'd' => Reply::Discard,
        b's' => Reply::Skip,
        b'p' => Reply::Progress,
        b'f' | b'4' => Reply::Shutdown,
        b'y' => Reply::ReplyCode(text(strings(data, 1)?[0])),
        b'h' => {
            let s = strings(data, 2)?;
            Reply::Modify(Modification::AddHeader {
                name: text(s[0]),
                value: s[1].to_vec(),
            })
        }
        b'i' | b'm' => {
            let (index, rest) = be_u32(data).ok_or_else(|| bad("header change without index"))?;
            let s = strings(rest, 2)?;
            let (name, value) = (text(s[0]), s[1].to_vec());
            Reply::Modify(if command == b'i' {
                Modification::InsertHeader { index, name, value }
            } else {
                Modification::ChangeHeader { index, name, value }
            })
        }
        b'e' => Reply::Modify(Modification::ChangeSender(text(first_string(data)?))),
        b'+' | b'2' => Reply::Modify(Modification::AddRecipient(text(first_string(data)?))),
        b'-' => Reply::Modify(Modification::DeleteRecipient(text(first_string(data)?))),
        b'b' => Reply::Modify(Modification::ReplaceBody(data.to_vec())),
        b'q' => Reply::Modify(Modification::Quarantine(text(first_string(data)?))),
        other => {
            return Err(bad(format!(
                "unknown reply command {:?} (0x{other:02x})",
                other as char
            )));
        }
    };
    Ok(Some((reply, 4 + len)))
}

fn be_u32(data: &[u8]) -> Option<(u32, &[u8])> {
    let (n, rest) = data.split_first_chunk::<4>()?;
    Some((u32::from_be_bytes(*n), rest))
}

/// Exactly `n` NUL-terminated strings (bytes after the last are ignored,
/// as libmilter's MTAs do).
fn strings(data: &[u8], n: usize) -> Result<Vec<&[u8]>, BadReply> {
    let mut out = Vec::with_capacity(n);
    let mut rest = data;
    for _ in 0..n {
        let end = memchr::memchr(0, rest).ok_or_else(|| bad("string without its NUL"))?;
        out.push(&rest[..end]);
        rest = &rest[end + 1..];
    }
    Ok(out)
}

/// The first NUL-terminated string (an address; ESMTP arguments after it
/// are ignored).
fn first_string(data: &[u8]) -> Result<&[u8], BadReply> {
    Ok(strings(data, 1)?[0])
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn negotiated(data: &[u8]) -> Result<Negotiated, BadReply> {
    let short = || bad("negotiation answer shorter than 12 bytes");
    let (version, rest) = be_u32(data).ok_or_else(short)?;
    let (actions, rest) = be_u32(rest).ok_or_else(short)?;
    let (protocol, mut rest) = be_u32(rest).ok_or_else(short)?;
    if version < 2 {
        return Err(bad(format!("filter speaks milter version {version}")));
    }
    if actions & !ALL_ACTIONS != 0 {
        return Err(bad(format!(
            "filter asks for unknown actions 0x{actions:x}"
        )));
    }
    if protocol & !ALL_PROTOCOL != 0 {
        return Err(bad(format!(
            "filter asks for protocol bits not offered: 0x{:x}",
            protocol & !ALL_PROTOCOL
        )));
    }
    let mut macros: [Option<Vec<String>>; 7] = Default::default();
    while !rest.is_empty() {
        let (stage, after) = be_u32(rest).ok_or_else(|| bad("macro list without its stage"))?;
        let list = first_string(after)?;
        rest = &after[list.len() + 1..];
        let slot = macros
            .get_mut(stage as usize)
            .ok_or_else(|| bad(format!("macro list for unknown stage {stage}")))?;
        *slot = Some(
            text(list)
                .split([' ', ','])
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect(),
        );
    }
    Ok(Negotiated {
        version,
        actions,
        protocol,
        macros,
    })
}

/// The SMTP reply in an `SMFIR_REPLYCODE` (its last line if several):
/// code, enhanced code (or `""`), text. `None` unless the code is 4xx or
/// 5xx, which is all a filter may give.
pub fn split_reply_code(reply: &str) -> Option<(u16, &str, &str)> {
    let line = reply
        .split(['\r', '\n'])
        .rfind(|l| !l.trim().is_empty())?
        .trim();
    let code: u16 = line.get(..3)?.parse().ok()?;
    if !(400..600).contains(&code) || !matches!(line.as_bytes().get(3), None | Some(b' ' | b'-')) {
        return None;
    }
    let rest = line.get(4..).unwrap_or("").trim_start();
    let (first, after) = rest.split_once(' ').unwrap_or((rest, ""));
    let is_enhanced = first.split('.').count() == 3
        && first
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && first.starts_with(char::from(b'0' + (code / 100) as u8));
    Some(if is_enhanced {
        (code, first, after.trim())
    } else {
        (code, "", rest)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(command: u8, data: &[u8]) -> Vec<u8> {
        let mut out = u32::try_from(data.len() + 1)
            .unwrap()
            .to_be_bytes()
            .to_vec();
        out.push(command);
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn encodes_commands_as_packets() {
        let macros = [("i".to_owned(), "Q1".to_owned())];
        let cases: Vec<(Command<'_>, Vec<u8>)> = vec![
            (
                Command::Negotiate,
                packet(b'O', &[0, 0, 0, 6, 0, 0, 1, 0xff, 0x30, 0x1f, 0xff, 0xff]),
            ),
            (
                Command::Connect {
                    host: "mx.test",
                    ip: Some("127.0.0.1".parse().unwrap()),
                    port: 25,
                },
                packet(b'C', b"mx.test\x004\x00\x19127.0.0.1\x00"),
            ),
            (
                Command::Connect {
                    host: "localhost",
                    ip: None,
                    port: 0,
                },
                packet(b'C', b"localhost\x00U"),
            ),
            (Command::Helo("a\0b"), packet(b'H', b"ab\x00")),
            (Command::Mail(""), packet(b'M', b"<>\x00")),
            (Command::Rcpt("b@x"), packet(b'R', b"<b@x>\x00")),
            (
                Command::Header(b"Subject", b"hi"),
                packet(b'L', b"Subject\x00hi\x00"),
            ),
            (Command::Body(b"x\r\n"), packet(b'B', b"x\r\n")),
            (Command::Eom, packet(b'E', b"")),
            (Command::Quit, packet(b'Q', b"")),
            (
                Command::Macros(Stage::Mail, &macros),
                packet(b'D', b"Mi\x00Q1\x00"),
            ),
        ];
        for (command, expected) in cases {
            let mut out = Vec::new();
            encode(&command, &mut out);
            assert_eq!(out, expected, "{command:?}");
        }
    }

    #[test]
    fn decodes_replies() {
        let h = |name: &str, value: &[u8]| Modification::AddHeader {
            name: name.into(),
            value: value.to_vec(),
        };
        let cases: Vec<(Vec<u8>, Reply)> = vec![
            (packet(b'c', b""), Reply::Continue),
            (packet(b'a', b""), Reply::Accept),
            (packet(b'r', b""), Reply::Reject),
            (packet(b't', b""), Reply::Tempfail),
            (packet(b'd', b""), Reply::Discard),
            (packet(b's', b""), Reply::Skip),
            (packet(b'p', b""), Reply::Progress),
            (packet(b'4', b""), Reply::Shutdown),
            (
                packet(b'y', b"554 5.7.1 no\x00"),
                Reply::ReplyCode("554 5.7.1 no".into()),
            ),
            (
                packet(b'h', b"X-A\x00 v\x00"),
                Reply::Modify(h("X-A", b" v")),
            ),
            (
                packet(b'i', b"\x00\x00\x00\x00DKIM-Signature\x00v=1\x00"),
                Reply::Modify(Modification::InsertHeader {
                    index: 0,
                    name: "DKIM-Signature".into(),
                    value: b"v=1".to_vec(),
                }),
            ),
            (
                packet(b'm', b"\x00\x00\x00\x02X-B\x00\x00"),
                Reply::Modify(Modification::ChangeHeader {
                    index: 2,
                    name: "X-B".into(),
                    value: Vec::new(),
                }),
            ),
            (
                packet(b'e', b"<n@x>\x00SIZE=1\x00"),
                Reply::Modify(Modification::ChangeSender("<n@x>".into())),
            ),
            (
                packet(b'2', b"<r@x>\x00NOTIFY=NEVER\x00"),
                Reply::Modify(Modification::AddRecipient("<r@x>".into())),
            ),
            (
                packet(b'-', b"<r@x>\x00"),
                Reply::Modify(Modification::DeleteRecipient("<r@x>".into())),
            ),
            (
                packet(b'b', b"new\r\n"),
                Reply::Modify(Modification::ReplaceBody(b"new\r\n".to_vec())),
            ),
            (
                packet(b'q', b"virus\x00"),
                Reply::Modify(Modification::Quarantine("virus".into())),
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(
                decode_reply(&bytes),
                Ok(Some((expected.clone(), bytes.len()))),
                "{expected:?}"
            );
            // Every proper prefix needs more bytes.
            for cut in 0..bytes.len() {
                assert_eq!(
                    decode_reply(&bytes[..cut]),
                    Ok(None),
                    "{expected:?} cut {cut}"
                );
            }
        }
    }

    #[test]
    fn decodes_the_negotiation_with_macro_lists() {
        let mut data = vec![0, 0, 0, 6, 0, 0, 0, 0x13, 0, 0, 0x14, 0x42];
        data.extend_from_slice(b"\x00\x00\x00\x05i {auth_authen}\x00");
        let (reply, _) = decode_reply(&packet(b'O', &data)).unwrap().unwrap();
        let Reply::Negotiated(n) = reply else {
            panic!("{reply:?}")
        };
        assert_eq!((n.version, n.actions, n.protocol), (6, 0x13, 0x1442));
        assert!(n.has(smfip::NR_CONN) && n.has(smfip::SKIP));
        assert!(!n.has(smfip::NOBODY));
        assert_eq!(
            n.macros_for(Stage::Eom),
            Some(&["i".to_owned(), "{auth_authen}".to_owned()][..])
        );
        assert_eq!(n.macros_for(Stage::Connect), None);
    }

    #[test]
    fn refuses_bad_input() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![0, 0, 0, 0], "length 0"),
            (
                u32::try_from(MAX_PACKET + 1)
                    .unwrap()
                    .to_be_bytes()
                    .to_vec(),
                "more than",
            ),
            (vec![0xff, 0xff, 0xff, 0xff], "more than"),
            (packet(b'Z', b""), "unknown reply"),
            (packet(b'y', b"554 no NUL"), "NUL"),
            (packet(b'h', b"X-A\x00v"), "NUL"),
            (packet(b'm', b"\x00\x00"), "without index"),
            (packet(b'O', &[0, 0, 0, 6, 0, 0]), "shorter than 12"),
            (
                packet(b'O', &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
                "version 1",
            ),
            (
                packet(b'O', &[0, 0, 0, 6, 0, 0, 2, 0, 0, 0, 0, 0]),
                "unknown actions",
            ),
            (
                packet(b'O', &[0, 0, 0, 6, 0, 0, 0, 0, 0x40, 0, 0, 0]),
                "not offered",
            ),
            (
                packet(
                    b'O',
                    &[0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, b'i', 0],
                ),
                "unknown stage",
            ),
        ];
        for (bytes, why) in cases {
            let err = decode_reply(&bytes).unwrap_err();
            assert!(err.0.contains(why), "{bytes:?}: {err} (wanted {why:?})");
        }
    }

    #[test]
    fn splits_reply_codes() {
        let cases = [
            (
                "554 5.7.1 Gtube pattern",
                Some((554, "5.7.1", "Gtube pattern")),
            ),
            ("451 4.7.1 Try later", Some((451, "4.7.1", "Try later"))),
            ("550 Go away", Some((550, "", "Go away"))),
            (
                "550 4.7.1 class mismatch",
                Some((550, "", "4.7.1 class mismatch")),
            ),
            (
                "554-5.7.1 one\r\n554 5.7.1 two",
                Some((554, "5.7.1", "two")),
            ),
            ("250 2.0.0 ok", None),
            ("5xx nope", None),
            ("", None),
        ];
        for (input, expected) in cases {
            assert_eq!(split_reply_code(input), expected, "{input:?}");
        }
    }
}
