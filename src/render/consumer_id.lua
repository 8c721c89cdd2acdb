-- Consumer identification for ironclad-rls, run by Envoy's Lua HTTP filter at the gateway.
--
-- It decides who is calling and puts the answer in the `synapse-consumerid` request header,
-- which the gateway's rate limit actions send to ironclad-rls as the `consumer` descriptor
-- entry. No header means "anonymous". The sources, in the Keycloak.SE rate limiter's order:
--
--   1. HTTP Basic credentials: `client_id:secret` or `client_id:`;
--   2. the `client_id` query parameter;
--   3. `client_id` in an `application/x-www-form-urlencoded` body;
--   4. the `azp` claim of a Bearer JWT.
--
-- Differences from the script the Keycloak.SE guide ships, on purpose:
--   * A `synapse-consumerid` sent by the client is always removed first: otherwise anyone
--     could pick the quota bucket they are counted in.
--   * With JWT_MODE = "verify", the `azp` comes only from a token that Envoy's jwt_authn
--     filter (or Istio's RequestAuthentication) has verified against the issuer's JWKS; a
--     token that fails verification never reaches this filter. With "decode" the claim is read
--     from an unverified token, as the original script does, so anyone can mint fresh ids.
--   * Nothing here ever fails the request. Bad base64, broken JSON, a huge or chunked body, an
--     id with spaces or control characters: the source is skipped and, if no source yields an
--     id, the request is anonymous.
--   * `client_id` must be a whole parameter name (`my_client_id=` is not it), values are
--     form-decoded (`a%20b`, `a+b`), the Basic user ends at the first `:` (RFC 7617), and the
--     content type may carry parameters (`; charset=UTF-8`).
--
-- `ironclad-rls render` rewrites the three settings below from its flags; keep each on one line.
local SOURCES = "basic,query,form,jwt" -- which of the sources above are used (order is fixed)
local JWT_MODE = "decode" -- "verify" | "decode" | "ignore"
local MAX_FORM_BYTES = 16384 -- larger form bodies are not read (no buffering, no 413)

local HEADER = "synapse-consumerid"
local JWT_METADATA = "envoy.filters.http.jwt_authn"
-- Ids are what a gateway can safely put in a header and a metric label: 1 to 256 visible
-- ASCII characters.
local MAX_ID_BYTES = 256
local MAX_JSON_DEPTH = 32

local function valid_id(s)
  if type(s) ~= "string" or #s == 0 or #s > MAX_ID_BYTES then
    return nil
  end
  if s:find("^[!-~]+$") == nil then
    return nil
  end
  return s
end

-- application/x-www-form-urlencoded decoding: `+` is a space, `%XX` a byte.
local function form_decode(s)
  s = s:gsub("%+", " ")
  return (s:gsub("%%(%x%x)", function(hex)
    return string.char(tonumber(hex, 16))
  end))
end

-- The value of the first `name=value` pair whose decoded name is exactly `name`.
local function form_value(s, name)
  for pair in (s .. "&"):gmatch("([^&]*)&") do
    local eq = pair:find("=", 1, true)
    if eq ~= nil and form_decode(pair:sub(1, eq - 1)) == name then
      return form_decode(pair:sub(eq + 1))
    end
  end
  return nil
end

-- Base64 in both alphabets (standard for Basic, URL-safe for JWT), padding optional.
-- Returns nil on any character outside them. Plain arithmetic: LuaJIT's `bit` module is not
-- guaranteed in every Envoy build.
local B64 = {}
do
  local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
  for i = 1, #alphabet do
    B64[alphabet:byte(i)] = i - 1
  end
  B64[("+"):byte()] = 62
  B64[("/"):byte()] = 63
  B64[("-"):byte()] = 62
  B64[("_"):byte()] = 63
end

local function base64_decode(s)
  s = s:gsub("=+$", "")
  if #s % 4 == 1 then
    return nil
  end
  local out, acc, bits = {}, 0, 0
  for i = 1, #s do
    local v = B64[s:byte(i)]
    if v == nil then
      return nil
    end
    acc = acc * 64 + v
    bits = bits + 6
    if bits >= 8 then
      bits = bits - 8
      local scale = 2 ^ bits
      local byte = math.floor(acc / scale)
      out[#out + 1] = string.char(byte)
      acc = acc - byte * scale
    end
  end
  return table.concat(out)
end

-- A small strict JSON reader, enough to find one claim. It raises an error on anything
-- malformed; the caller runs it under pcall.
local json_value

local function json_space(s, i)
  return s:find("[^ \t\r\n]", i) or #s + 1
end

local ESCAPES = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }

local function utf8_char(code)
  if code < 0x80 then
    return string.char(code)
  elseif code < 0x800 then
    return string.char(0xC0 + math.floor(code / 0x40), 0x80 + code % 0x40)
  end
  return string.char(0xE0 + math.floor(code / 0x1000), 0x80 + math.floor(code / 0x40) % 0x40, 0x80 + code % 0x40)
end

local function json_string(s, i)
  -- s:sub(i, i) is the opening quote.
  local out = {}
  i = i + 1
  while true do
    local c = s:sub(i, i)
    if c == "" then
      error("unterminated string")
    elseif c == '"' then
      return table.concat(out), i + 1
    elseif c == "\\" then
      local e = s:sub(i + 1, i + 1)
      if e == "u" then
        local hex = s:sub(i + 2, i + 5)
        if not hex:find("^%x%x%x%x$") then
          error("bad \\u escape")
        end
        out[#out + 1] = utf8_char(tonumber(hex, 16))
        i = i + 6
      elseif ESCAPES[e] ~= nil then
        out[#out + 1] = ESCAPES[e]
        i = i + 2
      else
        error("bad escape")
      end
    elseif c:byte() < 0x20 then
      error("control character in string")
    else
      out[#out + 1] = c
      i = i + 1
    end
  end
end

local function json_container(s, i, depth, close, read_item)
  if depth > MAX_JSON_DEPTH then
    error("too deep")
  end
  i = json_space(s, i + 1)
  if s:sub(i, i) == close then
    return i + 1
  end
  while true do
    i = json_space(s, read_item(i))
    local c = s:sub(i, i)
    if c == close then
      return i + 1
    elseif c ~= "," then
      error("expected , or " .. close)
    end
    i = json_space(s, i + 1)
  end
end

json_value = function(s, i, depth)
  i = json_space(s, i)
  local c = s:sub(i, i)
  if c == "{" then
    local object = {}
    local after = json_container(s, i, depth, "}", function(j)
      if s:sub(j, j) ~= '"' then
        error("expected a key")
      end
      local key, k = json_string(s, j)
      k = json_space(s, k)
      if s:sub(k, k) ~= ":" then
        error("expected :")
      end
      local value
      value, k = json_value(s, k + 1, depth + 1)
      object[key] = value
      return k
    end)
    return object, after
  elseif c == "[" then
    local array = {}
    local after = json_container(s, i, depth, "]", function(j)
      local value, k = json_value(s, j, depth + 1)
      array[#array + 1] = value
      return k
    end)
    return array, after
  elseif c == '"' then
    return json_string(s, i)
  end
  local number = s:match("^-?%d+%.?%d*[eE]?[-+]?%d*", i)
  if number ~= nil and tonumber(number) ~= nil then
    return tonumber(number), i + #number
  end
  for literal, value in pairs({ ["true"] = true, ["false"] = false, ["null"] = false }) do
    if s:sub(i, i + #literal - 1) == literal then
      return value, i + #literal
    end
  end
  error("unexpected character at " .. i)
end

local function json_object(s)
  local value, i = json_value(s, 1, 0)
  if json_space(s, i) <= #s or type(value) ~= "table" then
    error("not one JSON object")
  end
  return value
end

-- 1. `Authorization: Basic base64(client_id:secret)`.
local function from_basic(credentials)
  local decoded = base64_decode(credentials)
  if decoded == nil then
    return nil
  end
  local colon = decoded:find(":", 1, true)
  if colon == nil then
    return nil
  end
  -- OAuth 2.0 (RFC 6749 §2.3.1) form-encodes the client id inside Basic credentials.
  return valid_id(form_decode(decoded:sub(1, colon - 1)))
end

-- 2. `?client_id=` in the query string (fragment excluded).
local function from_query(path)
  local query = path:match("^[^?]*%?([^#]*)")
  if query == nil then
    return nil
  end
  return valid_id(form_value(query, "client_id"))
end

-- 3. `client_id=` in a form body of a known, bounded length.
local function from_form(request_handle, headers)
  local content_type = (headers:get("content-type") or ""):lower()
  if content_type:match("^%s*([^;%s]+)") ~= "application/x-www-form-urlencoded" then
    return nil
  end
  -- Reading the body buffers it; an unknown (chunked) or large length would risk Envoy's
  -- 413 for a request that merely failed to identify itself, so those are not read.
  local length = tonumber(headers:get("content-length") or "")
  if length == nil or length <= 0 or length > MAX_FORM_BYTES then
    return nil
  end
  local body = request_handle:body()
  if body == nil then
    return nil
  end
  return valid_id(form_value(body:getBytes(0, body:length()), "client_id"))
end

-- 4. The `azp` claim of a Bearer JWT.
local function from_verified_jwt(request_handle)
  local metadata = request_handle:streamInfo():dynamicMetadata():get(JWT_METADATA)
  if type(metadata) ~= "table" then
    return nil -- no token, or jwt_authn is not installed in front of this filter
  end
  -- Every entry is the payload of a token jwt_authn verified, under its provider's
  -- payload_in_metadata: `jwt_payload` in `render envoy`'s bootstrap, the issuer on Istio
  -- (one per jwtRule, so several realms work).
  for _, payload in pairs(metadata) do
    if type(payload) == "table" then
      local id = valid_id(payload["azp"])
      if id ~= nil then
        return id
      end
    end
  end
  return nil
end

local function from_decoded_jwt(token)
  local payload = token:match("^[%w_-]+%.([%w_-]+)%.[%w_-]*$")
  if payload == nil then
    return nil
  end
  local text = base64_decode(payload)
  if text == nil then
    return nil
  end
  local ok, claims = pcall(json_object, text)
  if not ok then
    return nil
  end
  return valid_id(claims["azp"])
end

local ENABLED = {}
for source in SOURCES:gmatch("[^,]+") do
  ENABLED[source] = true
end

local function identify(request_handle, headers)
  local scheme, credentials = (headers:get("authorization") or ""):match("^%s*(%a+)%s+(%S+)%s*$")
  scheme = scheme and scheme:lower()
  local id = nil
  if ENABLED.basic and scheme == "basic" then
    id = from_basic(credentials)
  end
  if id == nil and ENABLED.query then
    id = from_query(headers:get(":path") or "")
  end
  if id == nil and ENABLED.form then
    id = from_form(request_handle, headers)
  end
  if id == nil and ENABLED.jwt then
    if JWT_MODE == "verify" then
      id = from_verified_jwt(request_handle)
    elseif JWT_MODE == "decode" and scheme == "bearer" then
      id = from_decoded_jwt(credentials)
    end
  end
  return id
end

function envoy_on_request(request_handle)
  local headers = request_handle:headers()
  headers:remove(HEADER)
  local ok, id = pcall(identify, request_handle, headers)
  if not ok then
    request_handle:logDebug("consumer identification failed, treating as anonymous: " .. tostring(id))
    return
  end
  if id ~= nil then
    -- Handles taken before the filter yielded for the body are stale: take the headers anew.
    request_handle:headers():add(HEADER, id)
  end
end
