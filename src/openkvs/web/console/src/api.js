// The public KVS APIs, signed in the browser by the AWS SDK for JavaScript v3 with the keys from
// the sign-in form. The endpoint is this server (the console's own origin).
import {
    CreateSignalingChannelCommand,
    CreateStreamCommand,
    DeleteSignalingChannelCommand,
    DeleteStreamCommand,
    DescribeMediaStorageConfigurationCommand,
    KinesisVideoClient,
    ListSignalingChannelsCommand,
    ListStreamsCommand,
    UpdateMediaStorageConfigurationCommand,
    GetDataEndpointCommand,
} from '@aws-sdk/client-kinesis-video';
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

    async hlsUrl(streamName, start, end) {
        const client = await this.archived(streamName, 'GET_HLS_STREAMING_SESSION_URL');
        const r = await client.send(
            new GetHLSStreamingSessionURLCommand({
                StreamName: streamName,
                PlaybackMode: 'ON_DEMAND',
                HLSFragmentSelector: {
                    FragmentSelectorType: 'PRODUCER_TIMESTAMP',
                    TimestampRange: { StartTimestamp: start, EndTimestamp: end },
                },
                ContainerFormat: 'FRAGMENTED_MP4',
                Expires: 3600,
            }),
        );
        return r.HLSStreamingSessionURL;
    }

    async clip(streamName, start, end) {
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
        return r.Payload.transformToByteArray();
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
}
