// Test-only preload for the Windows lane (scripts/test-windows.sh), loaded with --require into every
// Windows node process under Wine. Never part of the package.
//
// Wine 8 lacks setsockopt(IPPROTO_TCP, TCP_KEEPALIVE), which libuv calls when keep-alive is asked for on a
// socket that is not connected yet (undici does, before every connect): the connect then fails with
// "connect UNKNOWN". Real Windows has the option. Deferring the call to the 'connect' event keeps the
// behaviour and avoids the gap.
'use strict';
const net = require('node:net');

const setKeepAlive = net.Socket.prototype.setKeepAlive;
net.Socket.prototype.setKeepAlive = function setKeepAliveOnceConnected(...args) {
  if (this.connecting || !this._handle) {
    this.once('connect', () => setKeepAlive.apply(this, args));
    return this;
  }
  return setKeepAlive.apply(this, args);
};
