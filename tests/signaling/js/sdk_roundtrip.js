// The official KVS WebRTC JS SDK as master and as viewer against openkvs, with endpoints and ICE
// servers from the AWS SDK for JavaScript v3. Prints one JSON object with what each side saw.
//
// Usage: node sdk_roundtrip.js '<json config>'
//   {endpoint, region, accessKeyId, secretAccessKey, channelName, viewerId, offer, answer,
//    viewerCandidates, masterCandidates, burst}
// Needs NODE_EXTRA_CA_CERTS=<openkvs ca.pem> for the local CA.
'use strict';

// Node 20 has no global WebSocket; the SDK then uses the `ws` package (`WebSocket || require('ws')`
// only works when the global name exists at all).
globalThis.WebSocket = require('ws');

const { SignalingClient, Role } = require('amazon-kinesis-video-streams-webrtc');
const {
    KinesisVideoClient,
    DescribeSignalingChannelCommand,
    GetSignalingChannelEndpointCommand,
} = require('@aws-sdk/client-kinesis-video');
const {
    KinesisVideoSignalingClient,
    GetIceServerConfigCommand,
} = require('@aws-sdk/client-kinesis-video-signaling');

const cfg = JSON.parse(process.argv[2]);
const credentials = { accessKeyId: cfg.accessKeyId, secretAccessKey: cfg.secretAccessKey };
const result = {
    master: { offers: [], candidates: [], statusResponses: [], errors: [] },
    viewer: { answers: [], candidates: [], statusResponses: [], errors: [] },
};

function finish(code) {
    process.stdout.write(JSON.stringify(result) + '\n');
    process.exit(code);
}
setTimeout(() => {
    result.timedOut = true;
    finish(2);
}, cfg.timeoutMs || 20000);

async function endpointsFor(kv, channelARN, role) {
    const resp = await kv.send(
        new GetSignalingChannelEndpointCommand({
            ChannelARN: channelARN,
            SingleMasterChannelEndpointConfiguration: { Protocols: ['WSS', 'HTTPS'], Role: role },
        }),
    );
    const out = {};
    for (const e of resp.ResourceEndpointList) out[e.Protocol] = e.ResourceEndpoint;
    return out;
}

async function iceServers(endpoint, channelARN, clientId) {
    const client = new KinesisVideoSignalingClient({ region: cfg.region, endpoint, credentials });
    const resp = await client.send(
        new GetIceServerConfigCommand({ ChannelARN: channelARN, ClientId: clientId }),
    );
    return resp.IceServerList;
}

function waitFor(predicate, ms) {
    return new Promise((resolve, reject) => {
        const start = Date.now();
        const timer = setInterval(() => {
            if (predicate()) {
                clearInterval(timer);
                resolve();
            } else if (Date.now() - start > ms) {
                clearInterval(timer);
                reject(new Error('condition not met in ' + ms + ' ms'));
            }
        }, 10);
    });
}

function opened(client) {
    return new Promise((resolve, reject) => {
        client.once('open', resolve);
        client.once('error', reject);
        client.open();
    });
}

async function main() {
    const kv = new KinesisVideoClient({ region: cfg.region, endpoint: cfg.endpoint, credentials });
    const info = await kv.send(new DescribeSignalingChannelCommand({ ChannelName: cfg.channelName }));
    const channelARN = info.ChannelInfo.ChannelARN;
    const masterEp = await endpointsFor(kv, channelARN, 'MASTER');
    const viewerEp = await endpointsFor(kv, channelARN, 'VIEWER');
    result.endpoints = { master: masterEp, viewer: viewerEp };
    result.iceServers = {
        master: await iceServers(masterEp.HTTPS, channelARN, undefined),
        viewer: await iceServers(viewerEp.HTTPS, channelARN, cfg.viewerId),
    };

    const master = new SignalingClient({
        channelARN,
        channelEndpoint: masterEp.WSS,
        role: Role.MASTER,
        region: cfg.region,
        credentials,
    });
    const viewer = new SignalingClient({
        channelARN,
        channelEndpoint: viewerEp.WSS,
        clientId: cfg.viewerId,
        role: Role.VIEWER,
        region: cfg.region,
        credentials,
    });

    master.on('sdpOffer', (offer, remoteClientId) => {
        result.master.offers.push({ offer, remoteClientId });
        if (result.master.offers.length === 1) {
            master.sendSdpAnswer(cfg.answer, remoteClientId, 'answer-1');
            for (const c of cfg.masterCandidates) master.sendIceCandidate(c, remoteClientId);
        }
    });
    master.on('iceCandidate', (candidate, remoteClientId) =>
        result.master.candidates.push({ candidate, remoteClientId }),
    );
    master.on('statusResponse', (s) => result.master.statusResponses.push(s));
    master.on('error', (e) => result.master.errors.push(String(e)));
    viewer.on('sdpAnswer', (answer, remoteClientId) =>
        result.viewer.answers.push({ answer, remoteClientId: remoteClientId || null }),
    );
    viewer.on('iceCandidate', (candidate, remoteClientId) =>
        result.viewer.candidates.push({ candidate, remoteClientId: remoteClientId || null }),
    );
    viewer.on('statusResponse', (s) => result.viewer.statusResponses.push(s));
    viewer.on('error', (e) => result.viewer.errors.push(String(e)));

    await opened(master);
    await opened(viewer);

    // Offer/answer and trickled candidates in both directions.
    viewer.sendSdpOffer(cfg.offer, undefined, 'offer-1');
    for (const c of cfg.viewerCandidates) viewer.sendIceCandidate(c);
    await waitFor(
        () =>
            result.master.candidates.length === cfg.viewerCandidates.length &&
            result.viewer.answers.length === 1 &&
            result.viewer.candidates.length === cfg.masterCandidates.length,
        10000,
    );

    // A master message without a recipient fails; the correlation id brings back a STATUS_RESPONSE.
    master.sendSdpAnswer(cfg.answer, undefined, 'no-recipient-1');
    await waitFor(() => result.master.statusResponses.length === 1, 5000);

    // A burst of offers over the per-connection SDP rate: the excess is refused.
    const offersBefore = result.master.offers.length;
    for (let i = 0; i < cfg.burst; i++) viewer.sendSdpOffer(cfg.offer, undefined, 'burst-' + i);
    await waitFor(
        () =>
            result.master.offers.length - offersBefore + result.viewer.statusResponses.length ===
            cfg.burst,
        5000,
    );
    result.burstDelivered = result.master.offers.length - offersBefore;

    viewer.close();
    master.close();
    finish(0);
}

main().catch((e) => {
    result.fatal = String((e && e.stack) || e);
    finish(1);
});
