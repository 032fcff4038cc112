// The public KVS APIs, signed in the browser by the AWS SDK for JavaScript v3 with the keys from
// the sign-in form. The endpoint is this server (the console's own origin).
import {
    CreateSignalingChannelCommand,
    CreateStreamCommand,
    DeleteSignalingChannelCommand,
    DeleteStreamCommand,
    DescribeMediaStorageConfigurationCommand,
    DescribeSignalingChannelCommand,
    DescribeStreamCommand,
    GetSignalingChannelEndpointCommand,
    KinesisVideoClient,
    ListSignalingChannelsCommand,
    ListStreamsCommand,
    ListTagsForResourceCommand,
    ListTagsForStreamCommand,
    TagResourceCommand,
    TagStreamCommand,
    UntagResourceCommand,
    UntagStreamCommand,
    UpdateDataRetentionCommand,
    UpdateMediaStorageConfigurationCommand,
    UpdateSignalingChannelCommand,
    GetDataEndpointCommand,
} from '@aws-sdk/client-kinesis-video';
import { GetIceServerConfigCommand, KinesisVideoSignalingClient } from '@aws-sdk/client-kinesis-video-signaling';
import { JoinStorageSessionAsViewerCommand, KinesisVideoWebRTCStorageClient } from '@aws-sdk/client-kinesis-video-webrtc-storage';
import { Sha256 } from '@aws-crypto/sha256-js';
import { SignatureV4 } from '@smithy/signature-v4';
import {
    GetClipCommand,
    GetImagesCommand,
    GetHLSStreamingSessionURLCommand,
    KinesisVideoArchivedMediaClient,
    ListFragmentsCommand,
} from '@aws-sdk/client-kinesis-video-archived-media';

const STORAGE_KEY = 'openkvs.console.credentials';
// SigV4 scopes may name any region here; ARNs carry the server's own region.
const DEFAULT_REGION = 'us-east-1';

export function loadCredentials() {
    try {
        const raw = sessionStorage.getItem(STORAGE_KEY);
        const c = raw ? JSON.parse(raw) : null;
        return c && c.accessKeyId && c.secretAccessKey ? c : null;
    } catch {
        return null;
    }
}

export function saveCredentials(c) {
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify(c));
}

export function clearCredentials() {
    sessionStorage.removeItem(STORAGE_KEY);
}

export class Api {
    constructor(credentials) {
        this.credentials = credentials;
        this.region = credentials.region || DEFAULT_REGION;
        this.endpoint = window.location.origin;
        this.kv = new KinesisVideoClient({
            region: this.region,
            endpoint: this.endpoint,
            credentials: { accessKeyId: credentials.accessKeyId, secretAccessKey: credentials.secretAccessKey },
            maxAttempts: 1,
        });
    }

    async listChannels() {
        const channels = [];
        let NextToken;
        do {
            const r = await this.kv.send(new ListSignalingChannelsCommand({ MaxResults: 100, NextToken }));
            channels.push(...(r.ChannelInfoList || []));
            NextToken = r.NextToken;
        } while (NextToken);
        return channels.sort((a, b) => a.ChannelName.localeCompare(b.ChannelName));
    }

    async listStreams() {
        const streams = [];
        let NextToken;
        do {
            const r = await this.kv.send(new ListStreamsCommand({ MaxResults: 100, NextToken }));
            streams.push(...(r.StreamInfoList || []));
            NextToken = r.NextToken;
        } while (NextToken);
        return streams.sort((a, b) => a.StreamName.localeCompare(b.StreamName));
    }

    async mediaStorage(channelArn) {
        const r = await this.kv.send(new DescribeMediaStorageConfigurationCommand({ ChannelARN: channelArn }));
        return r.MediaStorageConfiguration || null;
    }

    createChannel(name) {
        return this.kv.send(new CreateSignalingChannelCommand({ ChannelName: name, ChannelType: 'SINGLE_MASTER' }));
    }

    createStream(name, retentionHours) {
        return this.kv.send(new CreateStreamCommand({ StreamName: name, DataRetentionInHours: retentionHours }));
    }

    deleteChannel(arn) {
        return this.kv.send(new DeleteSignalingChannelCommand({ ChannelARN: arn }));
    }

    deleteStream(arn) {
        return this.kv.send(new DeleteStreamCommand({ StreamARN: arn }));
    }

    linkStorage(channelArn, streamArn, enabled) {
        const MediaStorageConfiguration = enabled ? { StreamARN: streamArn, Status: 'ENABLED' } : { Status: 'DISABLED' };
        return this.kv.send(new UpdateMediaStorageConfigurationCommand({ ChannelARN: channelArn, MediaStorageConfiguration }));
    }

    async archived(streamName, apiName) {
        const r = await this.kv.send(new GetDataEndpointCommand({ StreamName: streamName, APIName: apiName }));
        return new KinesisVideoArchivedMediaClient({
            region: this.region,
            endpoint: r.DataEndpoint,
            credentials: this.kv.config.credentials,
            maxAttempts: 1,
        });
    }

    async listFragments(streamName, start, end) {
        const client = await this.archived(streamName, 'LIST_FRAGMENTS');
        const fragments = [];
        let NextToken;
        do {
            const r = await client.send(
                new ListFragmentsCommand(
                    NextToken
                        ? { StreamName: streamName, NextToken, MaxResults: 1000 }
                        : {
                              StreamName: streamName,
                              MaxResults: 1000,
                              FragmentSelector: {
                                  FragmentSelectorType: 'PRODUCER_TIMESTAMP',
                                  TimestampRange: { StartTimestamp: start, EndTimestamp: end },
                              },
                          },
                ),
            );
            fragments.push(...(r.Fragments || []));
            NextToken = r.NextToken;
        } while (NextToken && fragments.length < 100000);
        return fragments;
    }

    // ON_DEMAND: start and end; LIVE_REPLAY: start only (then follows the live edge); LIVE:
    // neither (the newest fragments).
    async hlsUrl(streamName, start, end, mode = 'ON_DEMAND') {
        const client = await this.archived(streamName, 'GET_HLS_STREAMING_SESSION_URL');
        const range = {};
        if (start) range.StartTimestamp = start;
        if (end) range.EndTimestamp = end;
        const r = await client.send(
            new GetHLSStreamingSessionURLCommand({
                StreamName: streamName,
                PlaybackMode: mode,
                HLSFragmentSelector:
                    mode === 'LIVE' ? undefined : { FragmentSelectorType: 'PRODUCER_TIMESTAMP', TimestampRange: range },
                ContainerFormat: 'FRAGMENTED_MP4',
                DisplayFragmentTimestamp: 'ALWAYS',
                Expires: 3600,
            }),
        );
        return r.HLSStreamingSessionURL;
    }

    // The clip of [start, end] as an MP4 Blob; onProgress(bytes received so far) as it arrives.
    async clip(streamName, start, end, onProgress) {
        const client = await this.archived(streamName, 'GET_CLIP');
        const r = await client.send(
            new GetClipCommand({
                StreamName: streamName,
                ClipFragmentSelector: {
                    FragmentSelectorType: 'PRODUCER_TIMESTAMP',
                    TimestampRange: { StartTimestamp: start, EndTimestamp: end },
                },
            }),
        );
        const reader = r.Payload.transformToWebStream().getReader();
        const chunks = [];
        let received = 0;
        for (;;) {
            const { done, value } = await reader.read();
            if (done) break;
            chunks.push(value);
            received += value.length;
            if (onProgress) onProgress(received);
        }
        return new Blob(chunks, { type: 'video/mp4' });
    }

    // Up to `count` JPEG thumbnails spread over [start, end] (GetImages takes at most 300 s).
    async thumbnails(streamName, start, end, count) {
        const from = new Date(Math.max(start.getTime(), end.getTime() - 300000));
        const interval = Math.max(200, Math.ceil((end - from) / count));
        const client = await this.archived(streamName, 'GET_IMAGES');
        const r = await client.send(
            new GetImagesCommand({
                StreamName: streamName,
                ImageSelectorType: 'PRODUCER_TIMESTAMP',
                StartTimestamp: from,
                EndTimestamp: end,
                SamplingInterval: interval,
                Format: 'JPEG',
                WidthPixels: 160,
                MaxResults: count,
            }),
        );
        return (r.Images || []).filter((i) => i.ImageContent);
    }

    // -- one channel or stream: settings and tags --------------------------------------------

    async describeChannel(name) {
        const r = await this.kv.send(new DescribeSignalingChannelCommand({ ChannelName: name }));
        return r.ChannelInfo;
    }

    async describeStream(name) {
        const r = await this.kv.send(new DescribeStreamCommand({ StreamName: name }));
        return r.StreamInfo;
    }

    updateMessageTtl(channel, seconds) {
        return this.kv.send(
            new UpdateSignalingChannelCommand({
                ChannelARN: channel.ChannelARN,
                CurrentVersion: channel.Version,
                SingleMasterConfiguration: { MessageTtlSeconds: seconds },
            }),
        );
    }

    // UpdateDataRetention takes a change (increase or decrease), not the new value.
    updateRetention(stream, hours) {
        const current = stream.DataRetentionInHours || 0;
        return this.kv.send(
            new UpdateDataRetentionCommand({
                StreamARN: stream.StreamARN,
                CurrentVersion: stream.Version,
                Operation: hours >= current ? 'INCREASE_DATA_RETENTION' : 'DECREASE_DATA_RETENTION',
                DataRetentionChangeInHours: Math.abs(hours - current),
            }),
        );
    }

    // Tags as [[key, value], ...], sorted by key.
    async channelTags(arn) {
        const tags = {};
        let NextToken;
        do {
            const r = await this.kv.send(new ListTagsForResourceCommand({ ResourceARN: arn, NextToken }));
            Object.assign(tags, r.Tags || {});
            NextToken = r.NextToken;
        } while (NextToken);
        return Object.entries(tags).sort(([a], [b]) => a.localeCompare(b));
    }

    async streamTags(arn) {
        const tags = {};
        let NextToken;
        do {
            const r = await this.kv.send(new ListTagsForStreamCommand({ StreamARN: arn, NextToken }));
            Object.assign(tags, r.Tags || {});
            NextToken = r.NextToken;
        } while (NextToken);
        return Object.entries(tags).sort(([a], [b]) => a.localeCompare(b));
    }

    tagChannel(arn, key, value) {
        return this.kv.send(new TagResourceCommand({ ResourceARN: arn, Tags: [{ Key: key, Value: value }] }));
    }

    untagChannel(arn, key) {
        return this.kv.send(new UntagResourceCommand({ ResourceARN: arn, TagKeyList: [key] }));
    }

    tagStream(arn, key, value) {
        return this.kv.send(new TagStreamCommand({ StreamARN: arn, Tags: { [key]: value } }));
    }

    untagStream(arn, key) {
        return this.kv.send(new UntagStreamCommand({ StreamARN: arn, TagKeyList: [key] }));
    }

    // -- WebRTC: live viewing and storage-session diagnostics ---------------------------------

    async channelEndpoints(channelArn, role) {
        const r = await this.kv.send(
            new GetSignalingChannelEndpointCommand({
                ChannelARN: channelArn,
                SingleMasterChannelEndpointConfiguration: { Protocols: ['WSS', 'HTTPS', 'WEBRTC'], Role: role },
            }),
        );
        const ep = {};
        for (const e of r.ResourceEndpointList || []) ep[e.Protocol] = e.ResourceEndpoint;
        return ep;
    }

    async iceServers(channelArn, httpsEndpoint, clientId) {
        const signaling = new KinesisVideoSignalingClient({
            region: this.region,
            endpoint: httpsEndpoint,
            credentials: this.kv.config.credentials,
            maxAttempts: 1,
        });
        const r = await signaling.send(new GetIceServerConfigCommand({ ChannelARN: channelArn, ClientId: clientId }));
        return (r.IceServerList || []).map((s) => ({ urls: s.Uris, username: s.Username, credential: s.Password }));
    }

    joinAsViewer(channelArn, webrtcEndpoint, clientId) {
        const storage = new KinesisVideoWebRTCStorageClient({
            region: this.region,
            endpoint: webrtcEndpoint,
            credentials: this.kv.config.credentials,
            maxAttempts: 1,
            requestHandler: { requestTimeout: 6000 },
        });
        return storage.send(new JoinStorageSessionAsViewerCommand({ channelArn, clientId }));
    }

    // POST /describeStorageSessions on the channel's WEBRTC endpoint, SigV4-signed for
    // kinesisvideo (no SDK has a command for it). Errors come back as the SDK's do: name, message.
    async describeStorageSessions(channelArn) {
        const ep = await this.channelEndpoints(channelArn, 'MASTER');
        const url = new URL('/describeStorageSessions', ep.WEBRTC || this.endpoint);
        const body = JSON.stringify({ ChannelARN: channelArn });
        const signer = new SignatureV4({
            service: 'kinesisvideo',
            region: this.region,
            credentials: { accessKeyId: this.credentials.accessKeyId, secretAccessKey: this.credentials.secretAccessKey },
            sha256: Sha256,
        });
        const signed = await signer.sign({
            method: 'POST',
            protocol: url.protocol,
            hostname: url.hostname,
            port: url.port ? Number(url.port) : undefined,
            path: url.pathname,
            query: {},
            headers: { host: url.host, 'content-type': 'application/json' },
            body,
        });
        const headers = { ...signed.headers };
        delete headers.host; // the browser sets it
        const r = await fetch(url, { method: 'POST', headers, body });
        const text = await r.text();
        let data = null;
        try {
            data = JSON.parse(text);
        } catch {
            data = null;
        }
        if (!r.ok) {
            const err = new Error((data && (data.message || data.Message)) || `HTTP ${r.status}`);
            const type = (data && (data.__type || data.code)) || r.headers.get('x-amzn-ErrorType') || '';
            // "Code", "namespace#Code" or "Code:http://..." (as the SDKs read x-amzn-ErrorType)
            err.name = String(type).split(':')[0].split('#').pop() || 'Error';
            err.$metadata = { httpStatusCode: r.status };
            throw err;
        }
        return data.StorageSessions || [];
    }
}
