//! Winsock codes from the provider as the errno a Linux socket call sets for the same case.

use provider::socket::WsaError;

pub fn from_wsa(e: WsaError) -> i32 {
    use WsaError as W;
    match e {
        W::WSAEINTR => libc::EINTR,
        W::WSAEACCES => libc::EACCES,
        W::WSAEFAULT => libc::EFAULT,
        W::WSAEINVAL => libc::EINVAL,
        W::WSAEMFILE => libc::EMFILE,
        W::WSAEWOULDBLOCK => libc::EAGAIN,
        // A second operation while a blocking one runs (a linger close in progress).
        W::WSAEINPROGRESS => libc::EALREADY,
        W::WSAEALREADY => libc::EALREADY,
        W::WSAENOTSOCK => libc::EBADF,
        W::WSAEDESTADDRREQ => libc::EDESTADDRREQ,
        W::WSAEMSGSIZE => libc::EMSGSIZE,
        W::WSAEPROTOTYPE => libc::EPROTOTYPE,
        W::WSAENOPROTOOPT => libc::ENOPROTOOPT,
        W::WSAEPROTONOSUPPORT => libc::EPROTONOSUPPORT,
        W::WSAESOCKTNOSUPPORT => libc::ESOCKTNOSUPPORT,
        W::WSAEOPNOTSUPP => libc::EOPNOTSUPP,
        W::WSAEAFNOSUPPORT => libc::EAFNOSUPPORT,
        W::WSAEADDRINUSE => libc::EADDRINUSE,
        W::WSAEADDRNOTAVAIL => libc::EADDRNOTAVAIL,
        W::WSAENETDOWN => libc::ENETDOWN,
        W::WSAENETUNREACH => libc::ENETUNREACH,
        W::WSAENETRESET => libc::ENETRESET,
        W::WSAECONNABORTED => libc::ECONNABORTED,
        W::WSAECONNRESET => libc::ECONNRESET,
        W::WSAENOBUFS => libc::ENOBUFS,
        W::WSAEISCONN => libc::EISCONN,
        W::WSAENOTCONN => libc::ENOTCONN,
        W::WSAESHUTDOWN => libc::EPIPE,
        W::WSAETIMEDOUT => libc::ETIMEDOUT,
        W::WSAECONNREFUSED => libc::ECONNREFUSED,
        W::WSAEHOSTUNREACH => libc::EHOSTUNREACH,
        _ => libc::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_codes_map_as_linux_reports_them() {
        assert_eq!(from_wsa(WsaError::WSAEWOULDBLOCK), libc::EAGAIN);
        assert_eq!(from_wsa(WsaError::WSAECONNRESET), libc::ECONNRESET);
        assert_eq!(from_wsa(WsaError::WSAESHUTDOWN), libc::EPIPE);
        assert_eq!(from_wsa(WsaError::WSAENOTSOCK), libc::EBADF);
        assert_eq!(from_wsa(WsaError::WSAEADDRINUSE), libc::EADDRINUSE);
    }
}
