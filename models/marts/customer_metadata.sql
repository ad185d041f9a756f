-- What `elt push` sends to ASAPP's many-customer-metadata API: one row per (external conversation id,
-- external customer id). Matching rule: an ASAPP conversation's external_user_id (the customer id your
-- system passed to ASAPP) equals an APSIS profile's customer id attribute (var apsis_customer_id_attribute).
-- ASAPP's feeds carry no email or phone, so these come from the matched profile. Conversations without an
-- external_user_id cannot be addressed and are left out.
with

conversations as (

    select * from {{ ref('stg_asapp__convos_metadata') }}

),

profiles as (

    select * from {{ ref('int_apsis_profiles_pivoted') }}

),

addressed as (

    select
        coalesce(external_issue_id, cast(issue_id as {{ dbt.type_string() }})) as external_conversation_id,
        external_user_id as external_customer_id,
        auth_external_user_id as user_id,
        last_event_ts
    from conversations
    where external_user_id is not null

),

one_per_key as (

    {{ asapp_latest(
        'addressed',
        partition_by=['external_conversation_id', 'external_customer_id'],
        order_by=['last_event_ts desc nulls last', 'user_id desc'],
        columns=['external_conversation_id', 'external_customer_id', 'user_id', 'last_event_ts'],
    ) }}

),

final as (

    select
        one_per_key.external_conversation_id,
        one_per_key.external_customer_id,
        case
            when profiles.is_vip then 'vip'
            when profiles.profile_key is not null then 'known'
            else 'unknown'
        end as status,
        profiles.phone_number,
        profiles.email_address,
        one_per_key.user_id,
        profiles.address_country,
        profiles.address_state,
        profiles.address_zipcode,
        profiles.profile_key as apsis_profile_key,
        one_per_key.last_event_ts as last_conversation_event_at
    from one_per_key
    left join profiles
        on one_per_key.external_customer_id = profiles.customer_id

)

select * from final
