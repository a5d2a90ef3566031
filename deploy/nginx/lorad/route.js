// route.js — njs helper for the lorad router: the adapter id of a request, read from its body.
//
// nginx cannot look inside a JSON body by itself. This function is called (through js_set) when
// the upstream hash needs its key, which is after nginx has read the whole request body; it then
// parses the body and returns, in order of preference:
//   "model"                   OpenAI / vLLM requests (/v1/completions, /v1/chat/completions)
//   "parameters.adapter_id"   TGI / LoRAX requests (/generate, /generate_stream)
//   "lora_name"               admin calls (/v1/load_lora_adapter, /v1/unload_lora_adapter)
// and "" when there is none, the body is not JSON, or the body did not fit in memory
// (client_body_buffer_size): the router then spreads the request by $request_id. A client that
// sets the header X-Adapter-Id never gets here — router.conf prefers the header.

function adapter(r) {
    var body;
    try {
        body = r.requestText;
    } catch (e) {
        return ''; // the body was buffered to a file: not readable here
    }
    if (!body || body.length > 4194304)
        return '';
    var j;
    try {
        j = JSON.parse(body);
    } catch (e) {
        return '';
    }
    if (j === null || typeof j !== 'object')
        return '';
    if (typeof j.model === 'string')
        return j.model;
    if (j.parameters !== null && typeof j.parameters === 'object'
        && typeof j.parameters.adapter_id === 'string')
        return j.parameters.adapter_id;
    if (typeof j.lora_name === 'string')
        return j.lora_name;
    return '';
}

export default {adapter};
