// A customer's browser camera app, written the way the KVS WebRTC JS SDK sample writes it for
// WebRTC ingestion, with only the endpoint and the keys changed to point at openkvs. Bundled with
// esbuild at test time (tests/e2e/browser.py). The page exposes:
//   window.kvsApp.startMaster(cfg)  camera + microphone, ConnectAsMaster, JoinStorageSession
//   window.kvsApp.startViewer(cfg)  microphone, ConnectAsViewer, JoinStorageSessionAsViewer
//   window.kvsApp.state()           what happened so far (steps, joins, offers, stats samples)
// cfg: {endpoint, region, accessKeyId, secretAccessKey, channelName, clientId?, dropOffers?}
'use strict';

import { Role, SignalingClient } from 'amazon-kinesis-video-streams-webrtc';
import {
    DescribeMediaStorageConfigurationCommand,
    DescribeSignalingChannelCommand,
    GetSignalingChannelEndpointCommand,
    KinesisVideoClient,
} from '@aws-sdk/client-kinesis-video';
import {
    GetIceServerConfigCommand,
    KinesisVideoSignalingClient,
} from '@aws-sdk/client-kinesis-video-signaling';
import {
    JoinStorageSessionAsViewerCommand,
    JoinStorageSessionCommand,
    KinesisVideoWebRTCStorageClient,
} from '@aws-sdk/client-kinesis-video-webrtc-storage';

// The sample's retry loop (callJoinStorageSessionUntilSDPOfferReceived): JoinStorageSession only
// starts the session, so join again when no offer came within 6 s (plus a growing jitter).
const OFFER_WAIT_MS = 6000;
const MAX_JOIN_RETRIES = 5;

const state = {
    role: null,
    steps: [],
    joins: [],
    offers: [],
    answers: 0,
    candidatesSent: 0,
    candidatesReceived: 0,
    candidatesAdded: 0,
    statusResponses: [],
    signaling: [],
    pcStates: [],
    errors: [],
    samples: [],
    video: null,
    connectedAt: null,
    fatal: null,
};

function now() {
    return Date.now();
}

function step(name, detail) {
    state.steps.push({ t: now(), name, detail: detail === undefined ? null : detail });
}

function fail(where, err) {
    const text = `${where}: ${(err && (err.name || '')) || ''} ${(err && err.message) || err}`;
    state.errors.push({ t: now(), text: text.slice(0, 500) });
}

function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
}

async function waitUntil(predicate, ms) {
    const deadline = now() + ms;
    while (now() < deadline) {
        if (predicate()) return true;
        await sleep(50);
    }
    return predicate();
}

function retryable(err) {
    // The sample retries these and treats everything else as fatal.
    const name = (err && err.name) || '';
    const message = (err && err.message) || '';
    if (name === 'ClientLimitExceededException') {
        return !message.includes('maximum number of viewers connected to the session');
    }
    return (
        name === 'TimeoutError' ||
        name === 'NetworkingError' ||
        name === 'TypeError' || // fetch() network failures
        (err && err.$metadata && err.$metadata.httpStatusCode === 500)
    );
}

async function discover(cfg, role) {
    const credentials = { accessKeyId: cfg.accessKeyId, secretAccessKey: cfg.secretAccessKey };
    const kv = new KinesisVideoClient({ region: cfg.region, endpoint: cfg.endpoint, credentials });

    const described = await kv.send(new DescribeSignalingChannelCommand({ ChannelName: cfg.channelName }));
    const channelARN = described.ChannelInfo.ChannelARN;
    step('DescribeSignalingChannel', channelARN);

    const storage = await kv.send(new DescribeMediaStorageConfigurationCommand({ ChannelARN: channelARN }));
    const conf = storage.MediaStorageConfiguration || {};
    const ingest = conf.Status === 'ENABLED' && conf.StreamARN !== null && conf.StreamARN !== undefined;
    step('DescribeMediaStorageConfiguration', { status: conf.Status, streamARN: conf.StreamARN, ingest });
    if (!ingest) throw new Error('media storage is not enabled for this channel');

    const endpoints = await kv.send(
        new GetSignalingChannelEndpointCommand({
            ChannelARN: channelARN,
            SingleMasterChannelEndpointConfiguration: { Protocols: ['WSS', 'HTTPS', 'WEBRTC'], Role: role },
        }),
    );
    const ep = {};
    for (const e of endpoints.ResourceEndpointList) ep[e.Protocol] = e.ResourceEndpoint;
    step('GetSignalingChannelEndpoint', ep);

    const signalingApi = new KinesisVideoSignalingClient({ region: cfg.region, endpoint: ep.HTTPS, credentials });
    const ice = await signalingApi.send(
        new GetIceServerConfigCommand({ ChannelARN: channelARN, ClientId: role === Role.VIEWER ? cfg.clientId : undefined }),
    );
    // The sample also adds the region's KVS STUN server; openkvs hands out its own ICE servers only.
    const iceServers = (ice.IceServerList || []).map((s) => ({ urls: s.Uris, username: s.Username, credential: s.Password }));
    step('GetIceServerConfig', { count: iceServers.length });

    // The sample's storage client: no SDK retries (its own loop retries), 6 s timeout.
    const storageClient = new KinesisVideoWebRTCStorageClient({
        region: cfg.region,
        endpoint: ep.WEBRTC,
        credentials,
        maxAttempts: 1,
        requestHandler: { requestTimeout: 6000 },
    });
    return { credentials, channelARN, ep, iceServers, storageClient };
}

function preferCodecs(pc) {
    for (const t of pc.getTransceivers()) {
        const kind = t.receiver.track.kind;
        const caps = RTCRtpReceiver.getCapabilities(kind).codecs;
        const wanted = kind === 'video' ? /^video\/h264$/i : /^audio\/opus$/i;
        const codecs = caps.filter((c) => wanted.test(c.mimeType));
        if (codecs.length) t.setCodecPreferences(codecs);
    }
}

function sessionPeer(ctx) {
    // One RTCPeerConnection per storage-session offer; answers it, trickles candidates.
    const pc = new RTCPeerConnection({ iceServers: ctx.iceServers });
    let remoteSet;
    const remote = new Promise((resolve) => (remoteSet = resolve));
    pc.addEventListener('connectionstatechange', () => {
        state.pcStates.push({ t: now(), pc: ctx.pcCount, state: pc.connectionState });
        if (pc.connectionState === 'connected' && state.connectedAt === null) {
            state.connectedAt = now();
            step('connected');
        }
    });
    pc.addEventListener('icecandidate', ({ candidate }) => {
        if (!candidate || !candidate.candidate) return;
        try {
            ctx.signaling.sendIceCandidate(candidate); // no recipient: it goes to the storage session
            state.candidatesSent++;
        } catch (e) {
            fail('sendIceCandidate', e);
        }
    });
    return { pc, remote, remoteSet };
}

async function run(cfg, role) {
    state.role = role;
    const ctx = await discover(cfg, role);
    ctx.pcCount = 0;
    ctx.peer = null;
    ctx.accepted = 0;
    ctx.dropOffers = cfg.dropOffers || 0;
    const constraints = role === Role.MASTER ? { video: { width: 640, height: 480 }, audio: true } : { video: false, audio: true };
    ctx.localStream = await navigator.mediaDevices.getUserMedia(constraints);
    step('getUserMedia', ctx.localStream.getTracks().map((t) => t.kind));

    ctx.signaling = new SignalingClient({
        channelARN: ctx.channelARN,
        channelEndpoint: ctx.ep.WSS,
        clientId: role === Role.VIEWER ? cfg.clientId : undefined,
        role,
        region: cfg.region,
        credentials: ctx.credentials,
        enableEarlyIceCandidateBuffering: true, // what the sample sets for ingestion
    });

    ctx.signaling.on('open', () => {
        state.signaling.push({ t: now(), event: 'open' });
        joinUntilOffer(cfg, ctx, role).catch((e) => fail('join loop', e));
    });
    ctx.signaling.on('close', () => state.signaling.push({ t: now(), event: 'close' }));
    ctx.signaling.on('error', (e) => state.signaling.push({ t: now(), event: 'error', detail: String(e && e.message) }));
    ctx.signaling.on('statusResponse', (s) => state.statusResponses.push({ t: now(), ...s }));
    ctx.signaling.on('sdpOffer', (offer, senderClientId) => {
        onOffer(ctx, role, offer, senderClientId).catch((e) => fail('answering the offer', e));
    });
    ctx.signaling.on('iceCandidate', (candidate) => {
        state.candidatesReceived++;
        const peer = ctx.peer;
        if (!peer) return; // a candidate of an offer we did not take
        peer.remote
            .then(() => peer.pc.addIceCandidate(candidate))
            .then(() => state.candidatesAdded++)
            .catch((e) => fail('addIceCandidate', e));
    });
    ctx.signaling.open();
    window.__ctx = ctx;
}

async function joinUntilOffer(cfg, ctx, role) {
    for (let retry = 1; retry <= MAX_JOIN_RETRIES + 1; retry++) {
        if (state.connectedAt !== null && ctx.peer && ctx.peer.pc.connectionState === 'connected') return;
        const acceptedBefore = ctx.accepted;
        const command =
            role === Role.MASTER
                ? new JoinStorageSessionCommand({ channelArn: ctx.channelARN })
                : new JoinStorageSessionAsViewerCommand({ channelArn: ctx.channelARN, clientId: cfg.clientId });
        const started = now();
        try {
            const resp = await ctx.storageClient.send(command);
            state.joins.push({ t: started, ms: now() - started, status: resp.$metadata.httpStatusCode });
        } catch (e) {
            state.joins.push({ t: started, ms: now() - started, error: `${e.name}: ${e.message}` });
            if (!retryable(e)) {
                state.fatal = `JoinStorageSession failed: ${e.name}: ${e.message}`;
                return;
            }
        }
        const wait = OFFER_WAIT_MS + Math.min(Math.random() * Math.pow(200, retry - 1), 10000);
        if (await waitUntil(() => ctx.accepted > acceptedBefore, wait)) return;
        step('no offer in time, joining again', { waitedMs: Math.round(wait) });
        ctx.signaling.resetIceCandidateState(); // the sample does this before each retry
    }
    state.fatal = 'no SDP offer after all JoinStorageSession retries';
}

async function onOffer(ctx, role, offer, senderClientId) {
    const record = { t: now(), senderClientId: senderClientId === undefined ? null : senderClientId, sdp: offer.sdp };
    state.offers.push(record);
    if (ctx.dropOffers > 0) {
        // Fault injection: this offer is "lost" on the way; the app never sees it.
        ctx.dropOffers--;
        record.dropped = true;
        step('offer dropped');
        return;
    }
    ctx.accepted++;
    if (ctx.peer) ctx.peer.pc.close();
    ctx.pcCount++;
    const peer = sessionPeer(ctx);
    ctx.peer = peer;
    const pc = peer.pc;
    for (const track of ctx.localStream.getTracks()) pc.addTrack(track, ctx.localStream);
    pc.addEventListener('track', (ev) => onTrack(ctx, ev));
    await pc.setRemoteDescription(offer);
    peer.remoteSet();
    ctx.signaling.drainPendingIceCandidates();
    preferCodecs(pc);
    await pc.setLocalDescription(await pc.createAnswer());
    // Trickle ICE: the answer goes out now, candidates as they are gathered.
    ctx.signaling.sendSdpAnswer(pc.localDescription, undefined, `answer-${ctx.pcCount}`);
    state.answers++;
    record.answer = pc.localDescription.sdp;
    step('answered', ctx.pcCount);
}

function onTrack(ctx, ev) {
    if (!ctx.remoteStream) ctx.remoteStream = new MediaStream();
    ctx.remoteStream.addTrack(ev.track);
    if (ev.track.kind === 'audio') {
        // Play what the storage session sends (the other participants' mixed audio): Chromium
        // measures inbound audio levels on the playout path.
        const audio = document.getElementById('hear');
        audio.srcObject = new MediaStream([ev.track]);
        audio.play().catch((e) => fail('audio.play', e));
        return;
    }
    const video = document.getElementById('remote');
    video.srcObject = ctx.remoteStream;
    video.muted = true;
    video.play().catch((e) => fail('video.play', e));
    state.video = { frames: 0, first: null, last: null, width: 0, height: 0 };
    const onFrame = (_now, meta) => {
        const v = state.video;
        v.frames++;
        const sample = { t: now(), mediaTime: meta.mediaTime, presentedFrames: meta.presentedFrames };
        if (v.first === null) v.first = sample;
        v.last = sample;
        v.width = video.videoWidth;
        v.height = video.videoHeight;
        video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
}

async function sample() {
    const ctx = window.__ctx;
    if (!ctx || !ctx.peer) return;
    const out = { t: now(), pcState: ctx.peer.pc.connectionState };
    const stats = await ctx.peer.pc.getStats();
    const codecs = {};
    stats.forEach((s) => {
        if (s.type === 'codec') codecs[s.id] = s.mimeType + (s.sdpFmtpLine ? ';' + s.sdpFmtpLine : '');
    });
    stats.forEach((s) => {
        if (s.type === 'outbound-rtp') {
            out[`out_${s.kind}`] = {
                codec: codecs[s.codecId] || null,
                bytesSent: s.bytesSent,
                packetsSent: s.packetsSent,
                framesEncoded: s.framesEncoded,
                frameWidth: s.frameWidth,
                frameHeight: s.frameHeight,
                encoder: s.encoderImplementation,
            };
        } else if (s.type === 'inbound-rtp') {
            out[`in_${s.kind}`] = {
                codec: codecs[s.codecId] || null,
                packetsReceived: s.packetsReceived,
                bytesReceived: s.bytesReceived,
                totalAudioEnergy: s.totalAudioEnergy,
                audioLevel: s.audioLevel,
                framesDecoded: s.framesDecoded,
            };
        }
    });
    state.samples.push(out);
}

setInterval(() => sample().catch((e) => fail('getStats', e)), 1000);

window.kvsApp = {
    startMaster(cfg) {
        run(cfg, Role.MASTER).catch((e) => {
            state.fatal = `master setup failed: ${e.name}: ${e.message}`;
        });
    },
    startViewer(cfg) {
        run(cfg, Role.VIEWER).catch((e) => {
            state.fatal = `viewer setup failed: ${e.name}: ${e.message}`;
        });
    },
    stop() {
        const ctx = window.__ctx;
        if (!ctx) return;
        if (ctx.peer) ctx.peer.pc.close();
        ctx.signaling.close();
        for (const t of ctx.localStream.getTracks()) t.stop();
    },
    state() {
        return state;
    },
};
