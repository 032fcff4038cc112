// A minimal EventEmitter for the browser bundle. The KVS WebRTC SDK's SignalingClient extends
// Node's `events.EventEmitter`; web apps usually install the `events` npm package for it. The
// SDK only uses on/once/off/emit/removeAllListeners, so the bundle aliases `events` to this file.
// A plain constructor function, not a class: the SDK is compiled to ES5 and calls
// `EventEmitter.call(this)`.
'use strict';

function EventEmitter() {
    this._events = new Map();
}

EventEmitter.prototype.on = function (name, listener) {
    if (!this._events.has(name)) this._events.set(name, []);
    this._events.get(name).push(listener);
    return this;
};

EventEmitter.prototype.addListener = EventEmitter.prototype.on;

EventEmitter.prototype.once = function (name, listener) {
    const self = this;
    function wrapped(...args) {
        self.off(name, wrapped);
        listener.apply(self, args);
    }
    wrapped.listener = listener;
    return this.on(name, wrapped);
};

EventEmitter.prototype.off = function (name, listener) {
    const list = this._events.get(name);
    if (!list) return this;
    const i = list.findIndex((l) => l === listener || l.listener === listener);
    if (i >= 0) list.splice(i, 1);
    if (list.length === 0) this._events.delete(name);
    return this;
};

EventEmitter.prototype.removeListener = EventEmitter.prototype.off;

EventEmitter.prototype.removeAllListeners = function (name) {
    if (name === undefined) this._events.clear();
    else this._events.delete(name);
    return this;
};

EventEmitter.prototype.listenerCount = function (name) {
    return (this._events.get(name) || []).length;
};

EventEmitter.prototype.emit = function (name, ...args) {
    const list = this._events.get(name);
    if (!list || list.length === 0) {
        if (name === 'error') throw args[0] instanceof Error ? args[0] : new Error(String(args[0]));
        return false;
    }
    for (const listener of [...list]) listener.apply(this, args);
    return true;
};

module.exports = EventEmitter;
module.exports.EventEmitter = EventEmitter;
