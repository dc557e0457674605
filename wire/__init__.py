"""The shield wire protocol: framed msgpack headers and blosc2 vector chunks over TCP. No torch here."""
