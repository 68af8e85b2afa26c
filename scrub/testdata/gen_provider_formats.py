#!/usr/bin/env python3
"""Generate provider_formats.jsonl: synthetic credentials in each provider's
published format, each in a context form, plus negatives.

Every value is made up here from a seeded RNG: random characters in the
alphabet and length the provider documents (prefix, length, charset). No
value comes from a real account or from another scanner's test data.

Run from this directory: python3 gen_provider_formats.py > provider_formats.jsonl
The output is deterministic (fixed seed); the test reads the JSONL only.
"""

import json
import random
import string

R = random.Random(20261203)

LOWER = string.ascii_lowercase
UPPER = string.ascii_uppercase
DIGITS = string.digits
HEX = "0123456789abcdef"
ALNUM = UPPER + LOWER + DIGITS
LOWNUM = LOWER + DIGITS
UPNUM = UPPER + DIGITS
B64 = ALNUM + "+/"
B64URL = ALNUM + "-_"


def rnd(alphabet, n):
    while True:
        s = "".join(R.choice(alphabet) for _ in range(n))
        # Synthetic values must contain a digit and a letter when the
        # alphabet has both (as almost every real key of that length does).
        if any(c.isdigit() for c in alphabet) and not any(c.isdigit() for c in s):
            continue
        if any(c.isalpha() for c in alphabet) and not any(c.isalpha() for c in s):
            continue
        return s


def uuid():
    h = rnd(HEX, 32)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


def hexn(n):
    return lambda: rnd(HEX, n)


def alnum(n):
    return lambda: rnd(ALNUM, n)


def pre(prefix, alphabet, n):
    return lambda: prefix + rnd(alphabet, n)


# (provider, family, env name, header name or None, value generator)
# Formats as the providers document them (prefix, length, alphabet).
PROVIDERS = [
    # --- AI ---
    ("openai", "ai", "OPENAI_API_KEY", None, pre("sk-proj-", B64URL, 120)),
    ("anthropic", "ai", "ANTHROPIC_API_KEY", "x-api-key", lambda: "sk-ant-api03-" + rnd(B64URL, 93) + "AA"),
    ("cohere", "ai", "COHERE_API_KEY", None, alnum(40)),
    ("mistral", "ai", "MISTRAL_API_KEY", None, alnum(32)),
    ("groq", "ai", "GROQ_API_KEY", None, pre("gsk_", ALNUM, 52)),
    ("huggingface", "ai", "HF_TOKEN", None, pre("hf_", ALNUM, 34)),
    ("replicate", "ai", "REPLICATE_API_TOKEN", None, pre("r8_", ALNUM, 37)),
    ("together", "ai", "TOGETHER_API_KEY", None, hexn(64)),
    ("perplexity", "ai", "PERPLEXITY_API_KEY", None, pre("pplx-", ALNUM, 48)),
    ("deepseek", "ai", "DEEPSEEK_API_KEY", None, pre("sk-", HEX, 32)),
    ("xai", "ai", "XAI_API_KEY", None, pre("xai-", ALNUM, 80)),
    ("openrouter", "ai", "OPENROUTER_API_KEY", None, pre("sk-or-v1-", HEX, 64)),
    ("fireworks", "ai", "FIREWORKS_API_KEY", None, pre("fw_", ALNUM, 24)),
    ("elevenlabs", "ai", "ELEVENLABS_API_KEY", "xi-api-key", pre("sk_", HEX, 48)),
    ("assemblyai", "ai", "ASSEMBLYAI_API_KEY", "authorization", hexn(32)),
    ("deepgram", "ai", "DEEPGRAM_API_KEY", None, hexn(40)),
    ("langsmith", "ai", "LANGSMITH_API_KEY", None, lambda: "lsv2_pt_" + rnd(HEX, 32) + "_" + rnd(HEX, 10)),
    ("pinecone", "ai", "PINECONE_API_KEY", "Api-Key", lambda: "pcsk_" + rnd(ALNUM, 5) + "_" + rnd(ALNUM, 64)),
    ("tavily", "ai", "TAVILY_API_KEY", None, pre("tvly-", ALNUM, 32)),
    ("firecrawl", "ai", "FIRECRAWL_API_KEY", None, pre("fc-", HEX, 32)),
    ("stability", "ai", "STABILITY_API_KEY", None, pre("sk-", ALNUM, 48)),
    ("gemini", "ai", "GEMINI_API_KEY", "x-goog-api-key", pre("AIza", B64URL, 35)),
    ("serpapi", "ai", "SERPAPI_API_KEY", None, hexn(64)),
    ("apify", "ai", "APIFY_TOKEN", None, pre("apify_api_", ALNUM, 36)),
    # --- cloud ---
    ("aws", "cloud", "AWS_SECRET_ACCESS_KEY", None, lambda: rnd(B64, 40)),
    ("aws-key-id", "cloud", "AWS_ACCESS_KEY_ID", None, pre("AKIA", "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)),
    ("azure-ad", "cloud", "AZURE_CLIENT_SECRET", None, lambda: rnd(ALNUM, 3) + "8Q~" + rnd(B64URL + ".~", 34)),
    ("azure-storage", "cloud", "AZURE_STORAGE_KEY", None, lambda: rnd(B64, 76) + "+ASt" + rnd(B64, 6) + "=="),
    ("azure-cognitive", "cloud", "AZURE_OPENAI_API_KEY", "api-key", lambda: rnd(ALNUM, 52) + "JQQJ99" + rnd(ALNUM, 26)),
    ("gcp", "cloud", "GOOGLE_API_KEY", None, pre("AIza", B64URL, 35)),
    ("gcp-oauth", "cloud", "GOOGLE_CLIENT_SECRET", None, pre("GOCSPX-", B64URL, 28)),
    ("digitalocean", "cloud", "DIGITALOCEAN_TOKEN", None, pre("dop_v1_", HEX, 64)),
    ("linode", "cloud", "LINODE_TOKEN", None, hexn(64)),
    ("vultr", "cloud", "VULTR_API_KEY", None, lambda: rnd(UPNUM, 36)),
    ("hetzner", "cloud", "HCLOUD_TOKEN", None, alnum(64)),
    ("cloudflare", "cloud", "CLOUDFLARE_API_TOKEN", None, lambda: rnd(B64URL, 40)),
    ("cloudflare-global", "cloud", "CLOUDFLARE_API_KEY", "X-Auth-Key", hexn(37)),
    ("fastly", "cloud", "FASTLY_API_TOKEN", "Fastly-Key", lambda: rnd(B64URL, 32)),
    ("heroku", "cloud", "HEROKU_API_KEY", None, uuid),
    ("heroku-v2", "cloud", "HEROKU_API_TOKEN", None, lambda: "HRKU-AA" + rnd(B64URL, 58)),
    ("vercel", "cloud", "VERCEL_TOKEN", None, alnum(24)),
    ("netlify", "cloud", "NETLIFY_AUTH_TOKEN", None, pre("nfp_", ALNUM, 40)),
    ("render", "cloud", "RENDER_API_KEY", None, pre("rnd_", ALNUM, 32)),
    ("flyio", "cloud", "FLY_API_TOKEN", None, lambda: "FlyV1 fm2_" + rnd(B64, 200)),
    ("railway", "cloud", "RAILWAY_TOKEN", None, uuid),
    ("supabase", "cloud", "SUPABASE_ACCESS_TOKEN", None, pre("sbp_", HEX, 40)),
    ("scaleway", "cloud", "SCW_SECRET_KEY", None, uuid),
    ("ibm-cloud", "cloud", "IBMCLOUD_API_KEY", None, lambda: rnd(B64URL, 44)),
    ("alibaba", "cloud", "ALIBABA_CLOUD_ACCESS_KEY_SECRET", None, alnum(30)),
    ("tailscale", "cloud", "TS_AUTHKEY", None, lambda: "tskey-auth-" + rnd(ALNUM, 12) + "-" + rnd(ALNUM, 33)),
    ("akamai", "cloud", "AKAMAI_CLIENT_SECRET", None, lambda: rnd(B64, 43) + "="),
    # --- developer tools ---
    ("github", "devtools", "GITHUB_TOKEN", None, pre("ghp_", ALNUM, 36)),
    ("github-fine-grained", "devtools", "GH_PAT", None, lambda: "github_pat_" + rnd(ALNUM, 22) + "_" + rnd(ALNUM, 59)),
    ("gitlab", "devtools", "GITLAB_TOKEN", "PRIVATE-TOKEN", pre("glpat-", B64URL, 20)),
    ("bitbucket", "devtools", "BITBUCKET_APP_PASSWORD", None, pre("ATBB", ALNUM, 32)),
    ("npm", "devtools", "NPM_TOKEN", None, pre("npm_", ALNUM, 36)),
    ("pypi", "devtools", "PYPI_TOKEN", None, lambda: "pypi-AgEIcHlwaS5vcmc" + rnd(B64URL, 120)),
    ("nuget", "devtools", "NUGET_API_KEY", "X-NuGet-ApiKey", pre("oy2", LOWNUM, 43)),
    ("rubygems", "devtools", "GEM_HOST_API_KEY", None, pre("rubygems_", HEX, 48)),
    ("dockerhub", "devtools", "DOCKERHUB_TOKEN", None, pre("dckr_pat_", B64URL, 27)),
    ("jfrog", "devtools", "ARTIFACTORY_API_KEY", "X-JFrog-Art-Api", pre("AKCp", ALNUM, 69)),
    ("sonarcloud", "devtools", "SONAR_TOKEN", None, pre("sqp_", HEX, 40)),
    ("snyk", "devtools", "SNYK_TOKEN", None, uuid),
    ("circleci", "devtools", "CIRCLECI_TOKEN", "Circle-Token", lambda: "CCIPAT_" + rnd(ALNUM, 22) + "_" + rnd(HEX, 40)),
    ("buildkite", "devtools", "BUILDKITE_API_TOKEN", None, pre("bkua_", HEX, 40)),
    ("travis", "devtools", "TRAVIS_TOKEN", None, lambda: rnd(B64URL, 22)),
    ("codecov", "devtools", "CODECOV_TOKEN", None, uuid),
    ("terraform", "devtools", "TFE_TOKEN", None, lambda: rnd(ALNUM, 14) + ".atlasv1." + rnd(B64URL, 67)),
    ("pulumi", "devtools", "PULUMI_ACCESS_TOKEN", None, pre("pul-", HEX, 40)),
    ("doppler", "devtools", "DOPPLER_TOKEN", None, pre("dp.st.", ALNUM, 43)),
    ("vault", "devtools", "VAULT_TOKEN", "X-Vault-Token", pre("hvs.", B64URL, 90)),
    ("onepassword", "devtools", "OP_SERVICE_ACCOUNT_TOKEN", None, lambda: "ops_eyJzaWduSW5BZGRyZXNzIjoi" + rnd(B64, 300)),
    ("figma", "devtools", "FIGMA_TOKEN", "X-Figma-Token", pre("figd_", B64URL, 40)),
    ("linear", "devtools", "LINEAR_API_KEY", None, pre("lin_api_", ALNUM, 40)),
    ("postman", "devtools", "POSTMAN_API_KEY", "X-Api-Key", lambda: "PMAK-" + rnd(HEX, 24) + "-" + rnd(HEX, 34)),
    ("dbt", "devtools", "DBT_CLOUD_API_TOKEN", None, pre("dbtc_", B64URL, 48)),
    ("launchdarkly", "devtools", "LAUNCHDARKLY_SDK_KEY", None, lambda: "sdk-" + uuid()),
    ("atlassian", "devtools", "JIRA_API_TOKEN", None, lambda: "ATATT3xFfGF0" + rnd(B64URL, 180) + "=" + rnd(HEX, 8)),
    ("trello", "devtools", "TRELLO_TOKEN", None, lambda: "ATTA" + rnd(HEX, 64) + rnd(UPNUM, 8)),
    # --- observability ---
    ("datadog", "observability", "DD_API_KEY", "DD-API-KEY", hexn(32)),
    ("datadog-app", "observability", "DD_APP_KEY", "DD-APPLICATION-KEY", hexn(40)),
    ("newrelic", "observability", "NEW_RELIC_API_KEY", "Api-Key", pre("NRAK-", UPNUM, 27)),
    ("sentry", "observability", "SENTRY_AUTH_TOKEN", None, pre("sntryu_", HEX, 64)),
    ("grafana", "observability", "GRAFANA_TOKEN", None, lambda: "glsa_" + rnd(ALNUM, 32) + "_" + rnd(HEX, 8)),
    ("honeycomb", "observability", "HONEYCOMB_API_KEY", "X-Honeycomb-Team", alnum(22)),
    ("dynatrace", "observability", "DT_API_TOKEN", None, lambda: "dt0c01." + rnd(UPNUM, 24) + "." + rnd(UPNUM, 64)),
    ("splunk", "observability", "SPLUNK_HEC_TOKEN", None, uuid),
    ("pagerduty", "observability", "PAGERDUTY_TOKEN", None, lambda: "u+" + rnd(B64URL, 18)),
    ("opsgenie", "observability", "OPSGENIE_API_KEY", None, uuid),
    ("bugsnag", "observability", "BUGSNAG_API_KEY", None, hexn(32)),
    ("rollbar", "observability", "ROLLBAR_ACCESS_TOKEN", "X-Rollbar-Access-Token", hexn(32)),
    ("loggly", "observability", "LOGGLY_TOKEN", None, uuid),
    ("posthog", "observability", "POSTHOG_PERSONAL_API_KEY", None, pre("phx_", ALNUM, 47)),
    ("mixpanel", "observability", "MIXPANEL_API_SECRET", None, hexn(32)),
    ("amplitude", "observability", "AMPLITUDE_SECRET_KEY", None, hexn(32)),
    ("segment", "observability", "SEGMENT_WRITE_KEY", None, alnum(32)),
    # --- payments ---
    ("stripe", "payments", "STRIPE_SECRET_KEY", None, pre("sk_live_", ALNUM, 99)),
    ("stripe-restricted", "payments", "STRIPE_RESTRICTED_KEY", None, pre("rk_live_", ALNUM, 99)),
    ("stripe-webhook", "payments", "STRIPE_WEBHOOK_SECRET", None, pre("whsec_", ALNUM, 32)),
    ("paypal", "payments", "PAYPAL_CLIENT_SECRET", None, lambda: "E" + rnd(B64URL, 79)),
    ("square", "payments", "SQUARE_ACCESS_TOKEN", None, pre("EAAA", B64URL, 60)),
    ("braintree", "payments", "BRAINTREE_ACCESS_TOKEN", None, lambda: "access_token$production$" + rnd(LOWNUM, 16) + "$" + rnd(HEX, 32)),
    ("adyen", "payments", "ADYEN_API_KEY", "X-API-Key", lambda: "AQE" + rnd(B64URL, 180)),
    ("razorpay", "payments", "RAZORPAY_KEY_SECRET", None, alnum(24)),
    ("paystack", "payments", "PAYSTACK_SECRET_KEY", None, pre("sk_live_", HEX, 40)),
    ("flutterwave", "payments", "FLW_SECRET_KEY", None, lambda: "FLWSECK-" + rnd(HEX, 32) + "-X"),
    ("mollie", "payments", "MOLLIE_API_KEY", None, pre("live_", ALNUM, 30)),
    ("plaid", "payments", "PLAID_SECRET", None, hexn(30)),
    ("plaid-access", "payments", "PLAID_ACCESS_TOKEN", None, lambda: "access-production-" + uuid()),
    ("coinbase", "payments", "COINBASE_API_SECRET", None, lambda: rnd(B64, 86) + "=="),
    ("shopify", "payments", "SHOPIFY_ACCESS_TOKEN", "X-Shopify-Access-Token", pre("shpat_", HEX, 32)),
    ("lemonsqueezy", "payments", "LEMONSQUEEZY_API_KEY", None, lambda: "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9." + rnd(B64URL, 120) + "." + rnd(B64URL, 86)),
    # --- messaging, e-mail, webhooks ---
    ("slack-bot", "messaging", "SLACK_BOT_TOKEN", None, lambda: "xoxb-" + rnd(DIGITS, 12) + "-" + rnd(DIGITS, 13) + "-" + rnd(ALNUM, 24)),
    ("slack-refresh", "messaging", "SLACK_REFRESH_TOKEN", None, lambda: "xoxe-1-" + rnd(ALNUM, 146)),
    ("slack-rotating", "messaging", "SLACK_USER_TOKEN", None, lambda: "xoxe.xoxp-1-" + rnd(ALNUM, 160)),
    ("discord-bot", "messaging", "DISCORD_TOKEN", None, lambda: "MT" + rnd(ALNUM, 24) + "." + rnd(B64URL, 6) + "." + rnd(B64URL, 38)),
    ("telegram", "messaging", "TELEGRAM_BOT_TOKEN", None, lambda: rnd(DIGITS, 10) + ":AA" + rnd(B64URL, 33)),
    ("twilio", "messaging", "TWILIO_AUTH_TOKEN", None, hexn(32)),
    ("twilio-api-key", "messaging", "TWILIO_API_KEY", None, pre("SK", HEX, 32)),
    ("vonage", "messaging", "VONAGE_API_SECRET", None, alnum(16)),
    ("plivo", "messaging", "PLIVO_AUTH_TOKEN", None, alnum(40)),
    ("messagebird", "messaging", "MESSAGEBIRD_ACCESS_KEY", None, alnum(25)),
    ("sendgrid", "messaging", "SENDGRID_API_KEY", None, lambda: "SG." + rnd(B64URL, 22) + "." + rnd(B64URL, 43)),
    ("mailgun", "messaging", "MAILGUN_API_KEY", None, pre("key-", HEX, 32)),
    ("mailchimp", "messaging", "MAILCHIMP_API_KEY", None, lambda: rnd(HEX, 32) + "-us" + str(R.randint(1, 21))),
    ("postmark", "messaging", "POSTMARK_SERVER_TOKEN", "X-Postmark-Server-Token", uuid),
    ("sparkpost", "messaging", "SPARKPOST_API_KEY", None, hexn(40)),
    ("brevo", "messaging", "BREVO_API_KEY", "api-key", lambda: "xkeysib-" + rnd(HEX, 64) + "-" + rnd(ALNUM, 16)),
    ("mailjet", "messaging", "MAILJET_SECRET_KEY", None, hexn(32)),
    ("resend", "messaging", "RESEND_API_KEY", None, lambda: "re_" + rnd(ALNUM, 8) + "_" + rnd(ALNUM, 24)),
    ("pusher", "messaging", "PUSHER_APP_SECRET", None, hexn(20)),
    ("intercom", "messaging", "INTERCOM_ACCESS_TOKEN", None, lambda: "dG9rOj" + rnd(B64, 54) + "="),
    ("firebase-fcm", "messaging", "FCM_SERVER_KEY", None, lambda: "AAAA" + rnd(B64URL, 7) + ":APA91b" + rnd(B64URL, 134)),
    # --- SaaS ---
    ("notion", "saas", "NOTION_TOKEN", None, lambda: "ntn_" + rnd(DIGITS, 11) + rnd(ALNUM, 35)),
    ("notion-legacy", "saas", "NOTION_API_KEY", None, pre("secret_", ALNUM, 43)),
    ("airtable", "saas", "AIRTABLE_TOKEN", None, lambda: "pat" + rnd(ALNUM, 14) + "." + rnd(HEX, 64)),
    ("hubspot", "saas", "HUBSPOT_ACCESS_TOKEN", None, lambda: "pat-na1-" + uuid()),
    ("salesforce", "saas", "SALESFORCE_CLIENT_SECRET", None, lambda: rnd(HEX.upper(), 64)),
    ("zendesk", "saas", "ZENDESK_API_TOKEN", None, alnum(40)),
    ("freshdesk", "saas", "FRESHDESK_API_KEY", None, alnum(20)),
    ("asana", "saas", "ASANA_ACCESS_TOKEN", None, lambda: "2/" + rnd(DIGITS, 16) + "/" + rnd(DIGITS, 16) + ":" + rnd(HEX, 32)),
    ("clickup", "saas", "CLICKUP_API_TOKEN", None, lambda: "pk_" + rnd(DIGITS, 8) + "_" + rnd(UPNUM, 32)),
    ("monday", "saas", "MONDAY_API_TOKEN", None, lambda: "eyJhbGciOiJIUzI1NiJ9." + rnd(B64URL, 150) + "." + rnd(B64URL, 43)),
    ("typeform", "saas", "TYPEFORM_TOKEN", None, pre("tfp_", B64URL, 59)),
    ("contentful", "saas", "CONTENTFUL_MANAGEMENT_TOKEN", None, pre("CFPAT-", B64URL, 43)),
    ("dropbox", "saas", "DROPBOX_ACCESS_TOKEN", None, pre("sl.", B64URL, 140)),
    ("zoho", "saas", "ZOHO_ACCESS_TOKEN", None, lambda: "1000." + rnd(HEX, 32) + "." + rnd(HEX, 32)),
    ("mapbox", "saas", "MAPBOX_SECRET_TOKEN", None, lambda: "sk.eyJ1IjoiZXhhbXBsZSIsImEiOiJ" + rnd(B64URL, 20) + "." + rnd(B64URL, 22)),
    ("webflow", "saas", "WEBFLOW_API_TOKEN", None, hexn(64)),
    ("pipedrive", "saas", "PIPEDRIVE_API_TOKEN", None, hexn(40)),
    ("calendly", "saas", "CALENDLY_TOKEN", None, lambda: "eyJraWQiOiIxY2UxZTEzNjE3ZGNmNzY2YjNjZWJjY2Y4ZGM1YmFmYThhNjVlNjg0MDIzZjdjMzJiZTgzNDliMjM4MDEzNWI0IiwidHlwIjoiUEFUIiwiYWxnIjoiRVMyNTYifQ." + rnd(B64URL, 200) + "." + rnd(B64URL, 86)),
    ("twitter", "saas", "TWITTER_BEARER_TOKEN", None, lambda: "AAAAAAAAAAAAAAAAAAAAA" + rnd(ALNUM, 20) + "%3D" + rnd(ALNUM, 50)),
    ("facebook", "saas", "FACEBOOK_ACCESS_TOKEN", None, pre("EAAC", ALNUM, 180)),
    ("google-refresh", "saas", "GOOGLE_REFRESH_TOKEN", None, pre("1//0g", B64URL, 98)),
    ("google-access", "saas", "GOOGLE_ACCESS_TOKEN", None, pre("ya29.a0", B64URL, 200)),
    ("okta", "saas", "OKTA_API_TOKEN", None, pre("00", B64URL, 40)),
    ("auth0", "saas", "AUTH0_CLIENT_SECRET", None, lambda: rnd(B64URL, 64)),
    ("clerk", "saas", "CLERK_SECRET_KEY", None, pre("sk_live_", ALNUM, 40)),
    ("stytch", "saas", "STYTCH_SECRET", None, lambda: "secret-live-" + rnd(B64URL, 36) + "="),
    # --- data ---
    ("mongodb-atlas", "data", "MONGODB_ATLAS_PRIVATE_KEY", None, uuid),
    ("planetscale", "data", "PLANETSCALE_SERVICE_TOKEN", None, pre("pscale_tkn_", B64URL, 43)),
    ("neon", "data", "NEON_API_KEY", None, pre("napi_", LOWNUM, 64)),
    ("algolia", "data", "ALGOLIA_ADMIN_KEY", "X-Algolia-API-Key", hexn(32)),
    ("elastic", "data", "ELASTIC_API_KEY", None, lambda: rnd(B64, 58) + "=="),
    ("confluent", "data", "CONFLUENT_API_SECRET", None, lambda: rnd(B64, 64)),
    ("databricks", "data", "DATABRICKS_TOKEN", None, pre("dapi", HEX, 32)),
    ("snowflake", "data", "SNOWFLAKE_PASSWORD", None, lambda: rnd(ALNUM + "!#%*", 20)),
    ("upstash", "data", "UPSTASH_REDIS_REST_TOKEN", None, lambda: "AX" + rnd(B64URL, 70) + "="),
    ("cloudinary", "data", "CLOUDINARY_API_SECRET", None, lambda: rnd(B64URL, 27)),
    ("backblaze", "data", "B2_APPLICATION_KEY", None, pre("K00", B64URL.replace("-", "").replace("_", ""), 28)),
    ("wasabi", "data", "WASABI_SECRET_KEY", None, lambda: rnd(UPNUM, 40)),
]

# Webhook URLs and connection strings: the secret is part of a URL.
URLS = [
    ("slack-webhook", "messaging", lambda: ("https://hooks.slack.com/services/T" + rnd(UPNUM, 10) + "/B" + rnd(UPNUM, 10) + "/", alnum(24)())),
    ("discord-webhook", "messaging", lambda: ("https://discord.com/api/webhooks/" + rnd(DIGITS, 19) + "/", rnd(B64URL, 68))),
    ("teams-webhook", "messaging", lambda: ("https://contoso.webhook.office.com/webhookb2/" + uuid() + "@" + uuid() + "/IncomingWebhook/", rnd(HEX, 32) + "/" + uuid())),
    ("teams-workflow", "messaging", lambda: ("https://prod-12.westus.logic.azure.com:443/workflows/" + rnd(HEX, 32) + "/triggers/manual/paths/invoke?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=", rnd(B64URL, 43))),
    ("zapier-webhook", "saas", lambda: ("https://hooks.zapier.com/hooks/catch/" + rnd(DIGITS, 7) + "/", rnd(LOWNUM, 7) + "/")),
    ("google-chat-webhook", "messaging", lambda: ("https://chat.googleapis.com/v1/spaces/AAAA" + rnd(ALNUM, 7) + "/messages?key=" + pre("AIza", B64URL, 35)() + "&token=", rnd(B64URL, 43) + "%3D")),
    ("postgres-url", "data", lambda: ("postgres://app:", rnd(ALNUM, 24) + "@db.internal:5432/app")),
    ("mongodb-url", "data", lambda: ("mongodb+srv://admin:", rnd(ALNUM, 20) + "@cluster0.ab1cd.mongodb.net/prod")),
    ("redis-url", "data", lambda: ("rediss://default:", rnd(ALNUM, 32) + "@eu1-calm-fox-1234.upstash.io:6379")),
    ("amqp-url", "data", lambda: ("amqps://user:", rnd(ALNUM, 32) + "@rabbit.example.net/vhost")),
    ("cloudinary-url", "data", lambda: ("cloudinary://" + rnd(DIGITS, 15) + ":", rnd(B64URL, 27) + "@demo-cloud")),
]


def camel(env):
    parts = env.lower().split("_")
    return parts[0] + "".join(p.capitalize() for p in parts[1:])


def dotted(env):
    return env.lower().replace("_", ".")


def xml_tag(env):
    # Jenkins-style credential elements use the last words.
    parts = env.lower().split("_")
    tail = parts[-2:] if len(parts) >= 2 else parts
    return tail[0] + "".join(p.capitalize() for p in tail[1:])


CONTEXTS = [
    ("env", lambda env, hdr, v: f"{env}={v}"),
    ("shell-export", lambda env, hdr, v: f'export {env}="{v}"'),
    ("json", lambda env, hdr, v: '{"' + camel(env) + '": "' + v + '", "region": "us-east-1"}'),
    ("yaml", lambda env, hdr, v: f"  {env.lower()}: {v}"),
    ("toml", lambda env, hdr, v: f'{env.lower()} = "{v}"'),
    ("properties", lambda env, hdr, v: f"{dotted(env)}={v}"),
    ("xml", lambda env, hdr, v: f"    <{xml_tag(env)}>{v}</{xml_tag(env)}>"),
    ("xml-attribute", lambda env, hdr, v: f'<credential id="prod" {xml_tag(env)}="{v}" />'),
    ("header", lambda env, hdr, v: f"{hdr or 'X-Api-Key'}: {v}"),
    ("curl", lambda env, hdr, v: f"curl -s -H '{hdr or 'X-Api-Key'}: {v}' https://api.example.com/v1/items"),
    ("cli-flag", lambda env, hdr, v: f"deploy --token {v} --env prod"),
    ("log", lambda env, hdr, v: f"2026-11-25T10:00:00Z INFO Using Key = {v} for upload"),
    ("python", lambda env, hdr, v: f'client = Client(api_key="{v}")'),
    ("netrc", lambda env, hdr, v: f"machine api.example.com login deploy password {v}"),
    ("ini", lambda env, hdr, v: f"[default]\n{env.lower()} = {v}"),
    ("connection-string", lambda env, hdr, v: f"Server=tcp:db.example.net,1433;Database=app;User ID=app;Password={v};Encrypt=true"),
    ("k8s-env", lambda env, hdr, v: f"        - name: {env}\n          value: \"{v}\""),
]


def rows():
    out = []
    for i, (prov, fam, env, hdr, gen) in enumerate(PROVIDERS):
        # Each provider in five forms, rotating through the contexts so that
        # every form is used by many providers.
        for j in range(5):
            ctx_name, render = CONTEXTS[(i * 5 + j) % len(CONTEXTS)]
            v = gen()
            if ctx_name in ("netrc", "connection-string", "xml-attribute", "k8s-env") and " " in v:
                v = v.split(" ")[-1]
            out.append({"provider": prov, "family": fam, "kind": "secret", "context": ctx_name,
                        "value": v, "text": render(env, hdr, v)})
        # And once alone in prose, when the format has a prefix of its own.
    for prov, fam, gen in URLS:
        for form in ("bare", "env", "json"):
            head, secret = gen()
            url = head + secret
            text = {"bare": f"posting to {url} now", "env": f"WEBHOOK_URL={url}",
                    "json": '{"target": "' + url + '"}'}[form]
            secret_part = secret.split("@")[0]
            out.append({"provider": prov, "family": fam, "kind": "secret", "context": "url-" + form,
                        "value": secret_part, "text": text})
    out.extend(negatives())
    return out


def negatives():
    n = []

    def add(category, context, text):
        n.append({"provider": "-", "family": "negative:" + category, "kind": "negative",
                  "context": context, "value": "", "text": text})

    # Placeholders in every assignment form.
    placeholders = [
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "XXXXXXXXXXXXXXXXXXXX", "<your-api-key>", "<YOUR_TOKEN>",
        "${API_KEY}", "${{ secrets.API_TOKEN }}", "{{ api_key }}", "$API_TOKEN", "%API_KEY%",
        "changeme", "change_me_please", "your_api_key_here", "YOUR_SECRET_KEY", "replace-with-your-token",
        "1234567890abcdef1234567890abcdef", "0123456789abcdef", "abcdefghijklmnopqrstuvwxyz012345",
        "aaaaaaaaaaaaaaaaaaaaaaaa", "000000000000000000000000", "************************",
        "sk-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        "dummy-token-for-tests", "example-secret-value", "my-secret-password", "<redacted>",
        "sk_live_...", "abc123...", "null", "undefined", "true", "os.environ['API_KEY']",
        "process.env.API_KEY", "settings.API_TOKEN", "1234-1234-1234-1234", "abcabcabcabcabc1",
        "PLACEHOLDER_TOKEN_VALUE", "insert-key-here", "<%= ENV['SECRET'] %>", "@API_KEY@",
    ]
    envs = ["API_KEY", "SECRET_TOKEN", "DB_PASSWORD", "STRIPE_SECRET_KEY", "GITHUB_TOKEN"]
    for i, p in enumerate(placeholders):
        env = envs[i % len(envs)]
        for ctx_name, render in (CONTEXTS[i % 4], CONTEXTS[6 + i % 5]):
            add("placeholder", ctx_name, render(env, None, p))

    # UUIDs and ids in non-secret contexts.
    for i in range(25):
        u = uuid()
        forms = [
            f'{{"request_id": "{u}", "status": 200}}',
            f"trace_id={u} span=3",
            f'<order id="{u}"/>',
            f"x-correlation-id: {u}",
            f'"api_key_id": "{u}"',
            f"Processing job {u} for tenant acme",
            f"client_id: {u}",
            f"INFO user {u} logged in via session cookie",
        ]
        add("uuid", "various", forms[i % len(forms)])

    # Hashes in lockfiles and build metadata.
    for i in range(25):
        h40, h64 = rnd(HEX, 40), rnd(HEX, 64)
        forms = [
            f'      "integrity": "sha512-{rnd(B64, 86)}==",',
            f'checksum = "{h64}"',
            f"github.com/pkg/errors v0.9.1 h1:{rnd(B64, 43)}=",
            f'  resolved "https://registry.yarnpkg.com/js-tokens/-/js-tokens-4.0.0.tgz#{h40}"',
            f"  resolution: {{integrity: sha512-{rnd(B64, 86)}==}}",
            f"commit {h40}",
            f"image: ghcr.io/acme/api@sha256:{h64}",
            f'"sha": "{h40}", "message": "bump tokenizer"',
            f"Merge pull request #812 from acme/fix-token-refresh ({h40[:12]})",
            f'source = "registry+https://github.com/rust-lang/crates.io-index"\nchecksum = "{h64}"',
        ]
        add("hash", "lockfile", forms[i % len(forms)])

    # Ordinary prose and code that mentions keys, tokens and passwords.
    prose = [
        "Store the API key in your secret manager, never in the repository.",
        "The token bucket refills at 10 tokens per second.",
        "Pass the key to the constructor: Client(api_key=api_key)",
        "max_tokens: 4096",
        "token_type: Bearer",
        "\"expires_in\": 3599, \"token_type\": \"Bearer\", \"scope\": \"read\"",
        "public_key: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl deploy@ci",
        "password_file=/run/secrets/db_password",
        "api_url: https://api.example.com/v1",
        "keyboard layout: us-intl",
        "if token is None: raise AuthError('missing token')",
        "def get_api_key(self) -> str: return self._api_key",
        "const apiKey = process.env.OPENAI_API_KEY;",
        "api_key = os.environ[\"API_KEY\"]",
        "password = getpass.getpass(\"Password: \")",
        "The secret to good bread is patience.",
        "session: expired, please log in again",
        "primary_key: user_id",
        "partition_key = customer_id",
        "next_page_token: CiAKGjBpNDd2Nmp2Zml2cXRwYjBpOXA",
        "Authorization header missing",
        "See https://docs.example.com/auth/tokens#rotate for key rotation.",
        "cache_key = f\"user:{user_id}:profile\"",
        "private: false",
        "access: read-only",
        "secret_name: prod/db/credentials",
        "key_id: 2026-01-rotation",
        "tokenizer: cl100k_base",
        "password_min_length: 12",
        "license: Apache-2.0",
        "api_version: 2024-06-01",
        "\"key\": \"menu.file.open\", \"value\": \"Open…\"",
        "token_endpoint: https://oauth2.googleapis.com/token",
        "credentials_path: ~/.config/gcloud/application_default_credentials.json",
        "auth_method: oauth2",
        "DEBUG keyPressed = kVK_Return",
        "ssh-keygen -t ed25519 -C deploy@example.com",
        "openssl rand -hex 32 > secret.key",
        "kubectl create secret generic db --from-literal=password=$DB_PASSWORD",
        "The access log rotates daily at 00:00 UTC.",
    ]
    for p in prose:
        add("prose-code", "prose", p)
    return n


def main():
    for r in rows():
        print(json.dumps(r, ensure_ascii=False))


if __name__ == "__main__":
    main()
