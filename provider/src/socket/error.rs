//! Winsock error codes (DESIGN §6), numerically as Windows defines them.
use thiserror::Error;

macro_rules! wsa_errors {
    ($($name:ident = $code:literal : $text:literal,)*) => {
        /// A Winsock error. `code()` gives the numeric value the C ABI stores in `*lpErrno`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Error)]
        #[allow(clippy::upper_case_acronyms, non_camel_case_types)]
        pub enum WsaError {
            $(#[error($text)] $name,)*
        }

        impl WsaError {
            /// The numeric Winsock code.
            pub const fn code(self) -> i32 {
                match self { $(WsaError::$name => $code,)* }
            }

            /// The Winsock name, e.g. `"WSAENOTSOCK"`.
            pub const fn name(self) -> &'static str {
                match self { $(WsaError::$name => stringify!($name),)* }
            }

            /// The error for a numeric code, if it is one of ours.
            pub const fn from_code(code: i32) -> Option<Self> {
                match code { $($code => Some(WsaError::$name),)* _ => None }
            }

            /// Every code, for tests and documentation.
            pub const ALL: &'static [WsaError] = &[$(WsaError::$name,)*];
        }
    };
}

wsa_errors! {
    WSA_INVALID_HANDLE = 6: "invalid handle",
    WSA_OPERATION_ABORTED = 995: "overlapped operation aborted",
    WSA_IO_INCOMPLETE = 996: "overlapped I/O not yet complete",
    WSA_IO_PENDING = 997: "overlapped I/O will complete later",
    WSAEINTR = 10004: "blocking call interrupted",
    WSAEACCES = 10013: "permission denied",
    WSAEFAULT = 10014: "bad address or buffer",
    WSAEINVAL = 10022: "invalid argument",
    WSAEMFILE = 10024: "too many open sockets",
    WSAEWOULDBLOCK = 10035: "operation would block",
    WSAEINPROGRESS = 10036: "a blocking operation is in progress",
    WSAEALREADY = 10037: "operation already in progress",
    WSAENOTSOCK = 10038: "descriptor is not a socket",
    WSAEDESTADDRREQ = 10039: "destination address required",
    WSAEMSGSIZE = 10040: "message too long",
    WSAEPROTOTYPE = 10041: "wrong protocol type for socket",
    WSAENOPROTOOPT = 10042: "bad protocol option",
    WSAEPROTONOSUPPORT = 10043: "protocol not supported",
    WSAESOCKTNOSUPPORT = 10044: "socket type not supported",
    WSAEOPNOTSUPP = 10045: "operation not supported",
    WSAEAFNOSUPPORT = 10047: "address family not supported",
    WSAEADDRINUSE = 10048: "address already in use",
    WSAEADDRNOTAVAIL = 10049: "address not available",
    WSAENETDOWN = 10050: "network is down",
    WSAENETUNREACH = 10051: "network is unreachable",
    WSAENETRESET = 10052: "connection reset by network",
    WSAECONNABORTED = 10053: "connection aborted",
    WSAECONNRESET = 10054: "connection reset by peer",
    WSAENOBUFS = 10055: "no buffer space available",
    WSAEISCONN = 10056: "socket is already connected",
    WSAENOTCONN = 10057: "socket is not connected",
    WSAESHUTDOWN = 10058: "socket has been shut down",
    WSAETIMEDOUT = 10060: "connection timed out",
    WSAECONNREFUSED = 10061: "connection refused",
    WSAEHOSTUNREACH = 10065: "host unreachable",
    WSAEDISCON = 10101: "graceful shutdown in progress",
}

/// Result of a WSP call.
pub type WspResult<T> = Result<T, WsaError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_match_windows() {
        for &e in WsaError::ALL {
            assert_eq!(WsaError::from_code(e.code()), Some(e));
        }
        assert_eq!(WsaError::WSAENOTSOCK.code(), 10038);
        assert_eq!(WsaError::WSAEWOULDBLOCK.code(), 10035);
        assert_eq!(WsaError::WSA_OPERATION_ABORTED.code(), 995);
        assert_eq!(WsaError::WSAEDISCON.code(), 10101);
        assert_eq!(WsaError::WSAENOTSOCK.name(), "WSAENOTSOCK");
        assert_eq!(WsaError::from_code(0), None);
    }
}
