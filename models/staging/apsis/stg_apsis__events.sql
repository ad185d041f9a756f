-- One row per event: retries (the same correlation id sent again) and the overlap between consecutive
-- exports are removed, keeping the earliest received copy (created_at).
with

events as (

    {{ relation_or_empty(source('apsis', 'events'), {
        'profile_key': dbt.type_string(),
        'section_id': dbt.type_string(),
        'correlation_id': dbt.type_string(),
        'type_id': dbt.type_string(),
        'source_event_time': dbt.type_timestamp(),
        'created_at': dbt.type_timestamp(),
        'data': dbt.type_string(),
        'export_id': dbt.type_string(),
    }) }}

),

event_types as (

    {{ relation_or_empty(source('apsis', 'event_types'), {
        'section_id': dbt.type_string(),
        'event_id': dbt.type_string(),
        'version_id': dbt.type_string(),
        'name': dbt.type_string(),
    }) }}

),

keyed as (

    select
        *,
        {{ asapp_record_key(['profile_key', 'section_id', 'type_id',
            "coalesce(correlation_id, cast(created_at as " ~ dbt.type_string() ~ "))"]) }} as event_key
    from events

),

deduplicated as (

    {{ asapp_latest(
        'keyed',
        partition_by=['event_key'],
        order_by=['created_at asc', 'export_id asc'],
        columns=['event_key', 'profile_key', 'section_id', 'correlation_id', 'type_id', 'source_event_time',
                 'created_at', 'data', 'export_id'],
    ) }}

),

final as (

    select
        deduplicated.event_key,
        deduplicated.profile_key,
        deduplicated.section_id,
        deduplicated.correlation_id,
        deduplicated.type_id,
        event_types.event_id,
        event_types.name as event_name,
        deduplicated.source_event_time as source_event_at,
        deduplicated.created_at,
        deduplicated.data
    from deduplicated
    left join event_types
        on deduplicated.section_id = event_types.section_id
            and deduplicated.type_id = event_types.version_id

)

select * from final
