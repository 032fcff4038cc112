// Live: watch a channel's master through its storage session as a viewer (the KVS WebRTC SDK's
// SignalingClient as VIEWER + JoinStorageSessionAsViewer), with opt-in talk-back audio and
// readouts from RTCPeerConnection.getStats().
import { Role, SignalingClient } from 'amazon-kinesis-video-streams-webrtc';
import { busy, errorSlot, field, h, loadChannels, showError } from './dom.js';

const OFFER_WAIT_MS = 6000; // join again when no offer came in this time (as the KVS sample does)
const MAX_JOINS = 5;
const STATS_EVERY_MS = 1000;
const NTP_UNIX_OFFSET_MS = 2208988800000; // from 1900-01-01 (NTP) to 1970-01-01 (Unix)

function clientId() {
    const bytes = crypto.getRandomValues(new Uint8Array(6));
    return `console-${Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('')}`;
}

function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
}

// One viewer connection. `ui` receives status texts and stats readouts.
class Viewer {
    constructor(api, channel, video, ui) {
        this.api = api;
        this.channel = channel;
        this.video = video;
        this.ui = ui;
        this.clientId = clientId();
        this.pc = null;
        this.signaling = null;
        this.mic = null;
        this.offers = 0;
        this.closed = false;
        this.timer = null;
        this.last = null;
    }

    async start(talkBack) {
        const arn = this.channel.ChannelARN;
        this.ui.status('Finding the channel’s endpoints…');
        const ep = await this.api.channelEndpoints(arn, 'VIEWER');
        const iceServers = await this.api.iceServers(arn, ep.HTTPS, this.clientId);
        this.iceServers = iceServers;
        if (talkBack) await this.setTalkBack(true);
        this.signaling = new SignalingClient({
            channelARN: arn,
            channelEndpoint: ep.WSS,
            clientId: this.clientId,
            role: Role.VIEWER,
            region: this.api.region,
            credentials: { accessKeyId: this.api.credentials.accessKeyId, secretAccessKey: this.api.credentials.secretAccessKey },
            enableEarlyIceCandidateBuffering: true,
        });
        this.signaling.on('open', () => {
            this.ui.status('Connected to signaling; joining the storage session…');
            this.joinUntilOffer(arn, ep.WEBRTC).catch((err) => this.ui.error(err));
        });
        this.signaling.on('sdpOffer', (offer) => this.onOffer(offer).catch((err) => this.ui.error(err)));
        this.signaling.on('iceCandidate', (candidate) => {
            const pc = this.pc;
            if (!pc) return;
            this.remoteSet.then(() => pc.addIceCandidate(candidate)).catch(() => {});
        });
        this.signaling.on('close', () => {
            if (!this.closed) this.ui.status('Signaling closed.');
        });
        this.signaling.on('error', (err) => {
            if (!this.closed) this.ui.error(err);
        });
        this.signaling.open();
    }

    async joinUntilOffer(arn, endpoint) {
        for (let i = 0; i < MAX_JOINS && !this.closed; i++) {
            const before = this.offers;
            await this.api.joinAsViewer(arn, endpoint, this.clientId);
            const deadline = Date.now() + OFFER_WAIT_MS;
            while (Date.now() < deadline && !this.closed) {
                if (this.offers > before) return;
                await sleep(100);
            }
            if (this.closed) return;
            this.signaling.resetIceCandidateState();
            this.ui.status('No offer yet; joining again…');
        }
        if (!this.closed) throw new Error('The storage session sent no offer: is a master connected to this channel with media storage enabled?');
    }

    async onOffer(offer) {
        this.offers++;
        if (this.pc) this.pc.close();
        const pc = new RTCPeerConnection({ iceServers: this.iceServers });
        this.pc = pc;
        let remoteSet;
        this.remoteSet = new Promise((resolve) => (remoteSet = resolve));
        const stream = new MediaStream();
        pc.addEventListener('track', (ev) => {
            stream.addTrack(ev.track);
            if (this.video.srcObject !== stream) this.video.srcObject = stream;
            this.video.play().catch(() => {
                // Autoplay with sound refused: play muted (the controls can unmute).
                this.video.muted = true;
                this.video.play().catch(() => {});
            });
        });
        pc.addEventListener('icecandidate', ({ candidate }) => {
            if (candidate && candidate.candidate) this.signaling.sendIceCandidate(candidate);
        });
        pc.addEventListener('connectionstatechange', () => {
            this.ui.status(`Peer connection ${pc.connectionState}.`);
        });
        await pc.setRemoteDescription(offer);
        remoteSet();
        this.signaling.drainPendingIceCandidates?.();
        // Audio goes both ways whether or not the microphone is on, so talk-back can be switched
        // on and off without a new offer (replaceTrack).
        for (const t of pc.getTransceivers()) {
            if (t.receiver.track.kind === 'audio') {
                t.direction = 'sendrecv';
                this.audioSender = t.sender;
                if (this.mic) await t.sender.replaceTrack(this.mic);
            } else {
                t.direction = 'recvonly';
            }
        }
        await pc.setLocalDescription(await pc.createAnswer());
        this.signaling.sendSdpAnswer(pc.localDescription);
        if (!this.timer) this.timer = setInterval(() => this.sample().catch(() => {}), STATS_EVERY_MS);
    }

    async setTalkBack(on) {
        if (on && !this.mic) {
            const media = await navigator.mediaDevices.getUserMedia({ audio: true, video: false });
            this.mic = media.getAudioTracks()[0];
        } else if (!on && this.mic) {
            this.mic.stop();
            this.mic = null;
        }
        if (this.audioSender) await this.audioSender.replaceTrack(this.mic);
    }

    async sample() {
        if (!this.pc || this.closed) return;
        const stats = await this.pc.getStats();
        let inbound = null;
        let outboundAudio = null;
        let rtt = null;
        const pairs = {};
        let selectedPairId = null;
        stats.forEach((s) => {
            if (s.type === 'inbound-rtp' && s.kind === 'video') inbound = s;
            if (s.type === 'outbound-rtp' && s.kind === 'audio') outboundAudio = s;
            if (s.type === 'candidate-pair') pairs[s.id] = s;
            if (s.type === 'transport' && s.selectedCandidatePairId) selectedPairId = s.selectedCandidatePairId;
        });
        const pair = (selectedPairId && pairs[selectedPairId]) || Object.values(pairs).find((p) => p.nominated && p.state === 'succeeded');
        if (pair && typeof pair.currentRoundTripTime === 'number') rtt = pair.currentRoundTripTime;
        const sent = outboundAudio ? outboundAudio.packetsSent || 0 : 0;
        this.ui.stats({ talk: this.mic ? `on: ${sent} audio packets sent` : 'off' });
        if (!inbound) return;
        const now = inbound.timestamp;
        const prev = this.last;
        this.last = inbound;
        const out = {};
        if (prev) {
            const seconds = (now - prev.timestamp) / 1000;
            if (seconds > 0) {
                out.bitrate = ((inbound.bytesReceived - prev.bytesReceived) * 8) / seconds / 1000;
                if (inbound.framesPerSecond === undefined && inbound.framesDecoded !== undefined) {
                    out.fps = (inbound.framesDecoded - prev.framesDecoded) / seconds;
                }
            }
            // Jitter buffer delay over the last interval (per frame emitted from the buffer).
            const emitted = (inbound.jitterBufferEmittedCount || 0) - (prev.jitterBufferEmittedCount || 0);
            if (emitted > 0) out.jitter = ((inbound.jitterBufferDelay || 0) - (prev.jitterBufferDelay || 0)) / emitted;
            const decoded = (inbound.framesDecoded || 0) - (prev.framesDecoded || 0);
            if (decoded > 0) out.decode = ((inbound.totalDecodeTime || 0) - (prev.totalDecodeTime || 0)) / decoded;
        }
        if (inbound.framesPerSecond !== undefined) out.fps = inbound.framesPerSecond;
        if (inbound.frameWidth) out.resolution = `${inbound.frameWidth}×${inbound.frameHeight}`;
        if (out.jitter !== undefined) {
            out.delay = (out.jitter + (out.decode || 0) + (rtt !== null ? rtt / 2 : 0)) * 1000;
        }
        // Capture → display: the frame being played out, by the sender's NTP clock (the
        // server's sender reports map the relayed video's RTP timestamps to the camera's
        // capture clock), against this computer's clock at the time of the stats.
        const playout = inbound.estimatedPlayoutTimestamp;
        if (typeof playout === 'number' && playout > 0) {
            const playoutNtp = playout < NTP_UNIX_OFFSET_MS ? playout + NTP_UNIX_OFFSET_MS : playout;
            out.latency = now + NTP_UNIX_OFFSET_MS - playoutNtp;
        }
        out.rtt = rtt !== null ? rtt * 1000 : null;
        this.ui.stats(out);
    }

    stop() {
        this.closed = true;
        if (this.timer) clearInterval(this.timer);
        this.timer = null;
        if (this.pc) this.pc.close();
        this.pc = null;
        if (this.signaling) this.signaling.close();
        if (this.mic) this.mic.stop();
        this.mic = null;
        this.video.srcObject = null;
    }
}

export async function livePage(ctx, channelName) {
    const { api } = ctx;
    const loaded = await loadChannels(ctx, 'Live', 'No signaling channels yet: create one on the Channels and streams page.');
    if (loaded === null) return;
    const { channels, status, pageError } = loaded;
    const select = h('select', { name: 'channel' }, channels.map((c) => h('option', { value: c.ChannelName }, c.ChannelName)));
    if (channelName && channels.some((c) => c.ChannelName === channelName)) select.value = channelName;
    const talk = h('input', { type: 'checkbox', name: 'talkBack', id: 'talk-back' });
    const watch = h('button', { type: 'submit' }, 'Watch');
    const stopButton = h('button', { type: 'button', class: 'danger', disabled: true }, 'Stop');
    const error = errorSlot();
    const form = h(
        'form',
        { class: 'inline-form', 'aria-label': 'Watch a channel' },
        field('Channel', select),
        h('div', { class: 'check' }, talk, h('label', { for: 'talk-back' }, 'Talk back (send my microphone)')),
        watch,
        stopButton,
        error,
    );
    const video = h('video', { playsinline: true, controls: true, 'aria-label': 'Live video' });
    const live = h('p', { class: 'status', role: 'status', 'aria-live': 'polite' }, 'Not watching.');
    const readout = (key) => h('dd', { dataset: { readout: key } }, '—');
    const r = {
        bitrate: readout('bitrate'),
        resolution: readout('resolution'),
        fps: readout('fps'),
        latency: readout('latency'),
        delay: readout('delay'),
        talk: readout('talk'),
    };
    r.latency.setAttribute('aria-labelledby', 'latency-label');
    r.latency.setAttribute('aria-describedby', 'latency-note');
    r.delay.setAttribute('aria-describedby', 'delay-note');
    const facts = h(
        'dl',
        { class: 'facts', 'aria-label': 'Live readouts' },
        h('dt', {}, 'Bitrate'),
        r.bitrate,
        h('dt', {}, 'Resolution'),
        r.resolution,
        h('dt', {}, 'Frame rate'),
        r.fps,
        h('dt', { id: 'latency-label' }, 'Latency (capture → display)'),
        r.latency,
        h('dt', {}, 'Delay, server → screen (estimate)'),
        r.delay,
        h('dt', {}, 'Talk-back'),
        r.talk,
    );
    const explain = h(
        'p',
        { class: 'hint', id: 'latency-note' },
        'The latency is from the moment the camera captured the frame on screen to now: the capture time comes from the camera’s RTCP sender reports (relayed by the server) and is compared with this computer’s clock, so it is only right when the camera’s and this computer’s clocks agree (both NTP-synced). A camera clock that is behind adds to it, one that is ahead takes from it. It shows — until the browser has two of the server’s sender reports (a second or two); in a camera’s first seconds, before the server has the camera’s own first report, the server’s send time stands in for the capture time.',
    );
    const explainDelay = h(
        'p',
        { class: 'hint', id: 'delay-note' },
        'The delay estimate is the receive jitter buffer’s delay plus decoding time plus half the round-trip time to the server (from getStats). It measures the server → screen part only, and needs no clocks to agree.',
    );

    let viewer = null;
    const stopWatching = () => {
        if (viewer) viewer.stop();
        viewer = null;
        watch.disabled = false;
        stopButton.disabled = true;
        for (const el of Object.values(r)) el.textContent = '—';
    };
    const ui = {
        status: (text) => {
            live.textContent = text;
        },
        error: (err) => showError(error, err),
        stats: (s) => {
            if (s.talk !== undefined) r.talk.textContent = s.talk;
            if (s.bitrate !== undefined) r.bitrate.textContent = `${Math.round(s.bitrate)} kbit/s`;
            if (s.resolution) r.resolution.textContent = s.resolution;
            if (s.fps !== undefined) r.fps.textContent = `${s.fps.toFixed(1)} frames/s`;
            if (s.latency !== undefined) r.latency.textContent = `${Math.round(s.latency)} ms`;
            if (s.delay !== undefined) {
                r.delay.textContent = `${Math.round(s.delay)} ms` + (s.rtt !== null ? ` (round trip ${Math.round(s.rtt)} ms)` : '');
            }
        },
    };
    form.addEventListener('submit', (event) => {
        event.preventDefault();
        stopWatching();
        const channel = channels.find((c) => c.ChannelName === select.value);
        busy(watch, error, async () => {
            const v = new Viewer(api, channel, video, ui);
            viewer = v;
            stopButton.disabled = false;
            try {
                await v.start(talk.checked);
            } catch (err) {
                if (viewer === v) stopWatching();
                throw err;
            }
        }).then(() => {
            if (viewer) watch.disabled = true;
        });
    });
    stopButton.addEventListener('click', () => {
        stopWatching();
        live.textContent = 'Not watching.';
    });
    talk.addEventListener('change', () => {
        if (viewer) viewer.setTalkBack(talk.checked).catch((err) => showError(error, err));
    });
    status.textContent = 'Watch a channel’s master live through its storage session (the channel needs media storage enabled and a connected master).';
    ctx.render('Live', status, pageError, h('section', { 'aria-label': 'Live view' }, form, live, video, facts, explain, explainDelay));
    ctx.onLeave(stopWatching);
}
